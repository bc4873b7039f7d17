"""Build a dead letter that always fits in one Kafka message. Pure.

A stage may take in a message just under the broker's limit (1,000,000 bytes by default,
librdkafka's ``message.max.bytes`` too). Its dead letter holds the payload as a JSON string
plus an envelope: escaping alone can grow it six-fold (``\\u0001``), so the letter of a big
bad message would be refused by the producer (an exception in the stage's loop, the stream
stopped). The payload is cut to what fits, and the reason says so with both sizes.
"""

from __future__ import annotations

import time
from typing import Protocol

from flowscope.codec import JsonCodec
from flowscope.records import DeadLetter

MAX_LETTER_BYTES = 900_000  # under the 1,000,000-byte default message limit, with room
MAX_REASON_CHARS = 4096
# Worst case, one payload character takes 6 bytes in JSON (a control character escaped).
_PAYLOAD_CHARS = (MAX_LETTER_BYTES - MAX_REASON_CHARS * 6 - 4096) // 6

_CODEC = JsonCodec(DeadLetter)


def encode_dead_letter(
    *,
    stage: str,
    reason: str,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | str | None,
    value: bytes | None,
    time_ns: int,
) -> bytes:
    payload = "" if value is None else value.decode("utf-8", "replace")
    reason = reason[:MAX_REASON_CHARS]
    if len(payload) > _PAYLOAD_CHARS:
        size = len(value or b"")
        payload = payload[:_PAYLOAD_CHARS]
        reason += f" (payload cut to its first {_PAYLOAD_CHARS} characters of {size} bytes)"
    return _CODEC.encode(
        DeadLetter(
            stage=stage,
            reason=reason,
            source_topic=source_topic,
            partition=partition,
            offset=offset,
            key=key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
            payload=payload,
            time_ns=time_ns,
        )
    )


class Consumed(Protocol):
    """What a dead letter needs of a consumed message (confluent_kafka's Message)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | str | None: ...
    def value(self) -> bytes | None: ...


def dead_letter_of(msg: Consumed, *, stage: str, reason: str) -> bytes:
    """The dead letter of a consumed message, stamped now."""
    return encode_dead_letter(
        stage=stage,
        reason=reason,
        source_topic=msg.topic() or "",
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        key=msg.key(),
        value=msg.value(),
        time_ns=time.time_ns(),
    )
