"""Which record type each flowscope topic carries, so any topic can be read decoded.

A topic is named in full (``flowscope.enriched.tcp``) or by what follows the prefix
(``enriched.tcp``). The metadata topic is keyed Kubernetes objects, not one record type: it is
read as plain JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from flowscope import records as r
from flowscope.codec import DecodeError
from flowscope.topics import Topics

# Suffix (after "<prefix>.") -> record type; None: JSON of no fixed type.
RECORD_TYPES: Mapping[str, type[Any] | None] = {
    "raw.tcp": r.RawTcpConnection,
    "raw.udp": r.RawUdpFlow,
    "raw.dns": r.RawDnsQuery,
    "raw.drops": r.RawPacketDrops,
    "k8s.metadata": None,
    "enriched.tcp": r.EnrichedTcpConnection,
    "enriched.udp": r.EnrichedUdpFlow,
    "enriched.dns": r.EnrichedDnsQuery,
    "metrics.tcp.pairs": r.TcpPairMetric,
    "metrics.tcp.latency": r.TcpLatencyMetric,
    "metrics.cost.pairs": r.CostPairMetric,
    "metrics.cost.rollups": r.CostRollupMetric,
    "metrics.dns": r.DnsMetric,
    "metrics.path.health": r.PathHealthMetric,
    "alerts": r.AlertEvent,
    "deadletter": r.DeadLetter,
    "collector.health": r.CollectorHealth,
}


class UnknownTopic(ValueError):
    pass


@dataclass(frozen=True)
class TopicKind:
    topic: str  # the full name
    suffix: str
    record_type: type[Any] | None


def resolve_topic(name: str, topics: Topics) -> TopicKind:
    suffix = name[len(topics.prefix) + 1 :] if name.startswith(topics.prefix + ".") else name
    if suffix not in RECORD_TYPES:
        raise UnknownTopic(
            f"{name!r} is not a flowscope topic under prefix {topics.prefix!r}; valid: "
            f"{', '.join(RECORD_TYPES)} (or with the prefix)"
        )
    return TopicKind(f"{topics.prefix}.{suffix}", suffix, RECORD_TYPES[suffix])


class RecordDecoder:
    """Bytes of one message -> its records (a batch message is unrolled), validated."""

    def __init__(self, record_type: type[Any] | None) -> None:
        self.record_type = record_type
        target: Any = Any if record_type is None else record_type
        self._one = msgspec.json.Decoder(target)
        self._many = msgspec.json.Decoder(list[target])

    def decode(self, data: bytes | None) -> list[Any]:
        if data is None:
            return []  # a tombstone on the compacted metadata topic: nothing to show
        try:
            if self.record_type is None or data[:1] != b"[":
                return [self._one.decode(data)]
            return list(self._many.decode(data))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            what = self.record_type.__name__ if self.record_type else "JSON"
            raise DecodeError(f"{what}: {exc}") from exc
