"""Records about the pipeline itself: dead letters and collector health."""

from __future__ import annotations

import msgspec


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A record a stage could not process, with why. Counted and kept, never dropped."""

    stage: str  # e.g. "enricher"
    reason: str
    source_topic: str
    partition: int
    offset: int
    key: str | None
    payload: str  # the original bytes, decoded as UTF-8 with replacement
    time_ns: int


class CollectorHealth(msgspec.Struct, frozen=True, kw_only=True):
    """One collector's counters at one time: every loss it can count (kernel ring buffer,
    decode errors, Kafka buffer full, delivery failures, in records) beside its throughput
    counters; the same numbers as its Prometheus endpoint."""

    v: int = 1
    node: str
    time_ns: int
    uptime_s: float
    counters: dict[str, int]
    # Records dropped on a full producer buffer (counters' records_dropped_buffer_full) by
    # the pod they came from (its uid; the node name for host sockets): the pods whose
    # streams have a gap.
    records_dropped_by_key: dict[str, int] = {}
