"""Read records back from topics and print the service-pair table a person can read."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError

from flowscope.codec import JsonCodec
from flowscope.records import TcpPairMetric

T = TypeVar("T")


class TopicReader:
    """A consumer reading one topic from the beginning, with its own throwaway group."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"flowscope-reader-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                # Topics may not exist yet when the reader starts; they will.
                "topic.metadata.refresh.interval.ms": 1000,
            }
        )
        self._consumer.subscribe([topic])
        self.topic = topic

    def read(self, timeout_s: float) -> list[bytes]:
        """Everything that arrives within ``timeout_s`` (values only)."""
        return [value for _, value in self.read_timestamped(timeout_s)]

    def read_timestamped(self, timeout_s: float) -> list[tuple[int, bytes]]:
        """Everything that arrives within ``timeout_s``, with each message's Kafka timestamp
        (ms; the producer's create time) for latency measurements."""
        values: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            for msg in self._consumer.consume(num_messages=1000, timeout=min(left, 0.5)):
                err = msg.error()
                if err is not None:
                    if err.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                        continue
                    raise RuntimeError(f"reading {self.topic}: {err}")
                value = msg.value()
                if value is not None:
                    values.append((msg.timestamp()[1], value))
        return values

    def read_until(
        self,
        codec: JsonCodec[T],
        done: Callable[[list[T]], bool],
        timeout_s: float,
    ) -> list[T]:
        """Decode records until ``done(records)`` holds; returns what was read either way."""
        records: list[T] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            records.extend(codec.decode(v) for v in self.read(0.5))
            if done(records):
                break
        return records

    def close(self) -> None:
        self._consumer.close()


@dataclass(frozen=True)
class PairRow:
    client: str
    server: str
    zones: str
    connections: int
    bytes_c2s: int
    bytes_s2c: int
    p50_ms: float | None
    p99_ms: float | None


def summarize(metrics: Sequence[TcpPairMetric]) -> list[PairRow]:
    """One row per workload pair over all windows. Percentiles come from merged sketches."""
    from processors.sketch import Sketch  # the processor's sketch: the same merge consumers do

    groups: dict[tuple[str, str], list[TcpPairMetric]] = {}
    for m in metrics:
        groups.setdefault((m.client_workload, m.server_workload), []).append(m)
    rows = []
    for (client, server), ms in sorted(groups.items()):
        merged: Sketch | None = None
        for m in ms:
            if m.connect_latency_sketch is not None:
                sk = Sketch.from_dict(m.connect_latency_sketch)
                if merged is None:
                    merged = sk
                else:
                    merged.merge(sk)
        czones = sorted({z for m in ms for z in m.client_zones})
        szones = sorted({z for m in ms for z in m.server_zones})
        p50 = merged.quantile(0.5) if merged is not None else None
        p99 = merged.quantile(0.99) if merged is not None else None
        rows.append(
            PairRow(
                client=client,
                server=server,
                zones=f"{','.join(czones) or '?'} -> {','.join(szones) or '?'}",
                connections=sum(m.connections for m in ms),
                bytes_c2s=sum(m.bytes_client_to_server for m in ms),
                bytes_s2c=sum(m.bytes_server_to_client for m in ms),
                p50_ms=None if p50 is None else p50 / 1000,
                p99_ms=None if p99 is None else p99 / 1000,
            )
        )
    return rows


def format_table(rows: Sequence[PairRow]) -> str:
    headers = ["client", "server", "zones", "conns", "bytes c->s", "bytes s->c", "p50 ms", "p99 ms"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    cells = [
        [
            r.client,
            r.server,
            r.zones,
            str(r.connections),
            f"{r.bytes_c2s:,}",
            f"{r.bytes_s2c:,}",
            ms(r.p50_ms),
            ms(r.p99_ms),
        ]
        for r in rows
    ]
    widths = [
        max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)
