"""The metric topics merged the way a reader must merge them: the first record per
``metric_id`` (a republished window is dropped, processors/core/dedupe.py), counts summed over
windows and source partitions, percentiles from the merged sketches (never averaged).

Pure: records in, rows out. ``top`` and the Prometheus exporter read the same rows, so what a
person sees and what Prometheus scrapes cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flowscope.records import (
    AlertEvent,
    CostPairMetric,
    DnsMetric,
    PathHealthMetric,
    TcpLatencyMetric,
)
from processors.core.dedupe import FirstPerId
from processors.core.sketch import Sketch


def short_workload(key: str) -> str:
    """``shop/Deployment/frontend`` -> ``shop/frontend``: the kind rarely matters on a screen."""
    parts = key.split("/")
    return f"{parts[0]}/{parts[2]}" if len(parts) == 3 else key


def namespace_of(key: str) -> str | None:
    parts = key.split("/")
    return parts[0] if len(parts) == 3 else None


def _merge(sketches: Iterable[dict[str, object] | None]) -> Sketch | None:
    merged: Sketch | None = None
    for d in sketches:
        if d is None:
            continue
        sk = Sketch.from_dict(d)
        if merged is None:
            merged = sk
        else:
            merged.merge(sk)
    return merged


def _ms(sketch: Sketch | None, q: float) -> float | None:
    if sketch is None:
        return None
    v = sketch.quantile(q)
    return None if v is None else v / 1000.0


@dataclass
class PairRow:
    client: str
    server: str
    service: str
    connections: int = 0
    failed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.connections if self.connections else None


@dataclass
class CostRow:
    source: str
    destination: str
    source_zone: str
    destination_zone: str
    cost_class: str
    connections: int = 0
    bytes: int = 0
    usd: float = 0.0


@dataclass
class PathRow:
    """One network path (node pair or zone pair): every namespace's connections on it."""

    scope: str  # "node" or "zone"
    source: str  # where the client ends ran
    destination: str  # where the server ends ran
    connections: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    resets: int = 0
    connect_timeouts: int = 0
    syn_retransmits: int = 0
    retrans_segs: int = 0
    segs_out: int = 0
    rtt_p50_ms: float | None = None
    rtt_p99_ms: float | None = None
    services: set[str] = field(default_factory=set)  # "client -> server" workload pairs

    @property
    def retransmission_rate(self) -> float | None:
        return self.retrans_segs / self.segs_out if self.segs_out else None


@dataclass
class DnsRow:
    client: str
    server: str
    queries: int = 0
    failed: int = 0
    noise: int = 0
    timeouts: int = 0
    p99_ms: float | None = None

    @property
    def failure_rate(self) -> float | None:
        judged = self.queries - self.noise
        return self.failed / judged if judged > 0 else None


def _ns_ok(namespace: str | None, *keys: str) -> bool:
    return namespace is None or any(namespace_of(k) == namespace for k in keys)


def _service_ends(services: Iterable[str]) -> list[str]:
    """``["a -> b", ...]`` -> ``["a", "b", ...]``: the workloads that used a path."""
    return [end for pair in services for end in pair.split(" -> ")]


class Board:
    """Everything read from the metric topics, deduplicated, kept while its window ends after
    ``since_ns`` (``prune``); rows are built on demand, optionally for one namespace."""

    def __init__(self) -> None:
        self._first = FirstPerId()
        self.latency: list[TcpLatencyMetric] = []
        self.cost: list[CostPairMetric] = []
        self.dns: list[DnsMetric] = []
        self.health: list[PathHealthMetric] = []
        self.alerts: dict[str, AlertEvent] = {}  # latest event per episode

    @property
    def duplicates(self) -> int:
        return self._first.duplicates

    def add(self, record: Any) -> None:
        if isinstance(record, AlertEvent):
            seen = self.alerts.get(record.alert_id)
            # resolved is final for an episode; a re-sent firing must not revive it
            if seen is None or seen.status == "firing":
                self.alerts[record.alert_id] = record
            return
        if isinstance(record, TcpLatencyMetric):
            self.latency.extend(self._first.keep([record]))
        elif isinstance(record, CostPairMetric):
            self.cost.extend(self._first.keep([record]))
        elif isinstance(record, DnsMetric):
            self.dns.extend(self._first.keep([record]))
        elif isinstance(record, PathHealthMetric):
            self.health.extend(self._first.keep([record]))

    def prune(self, since_ns: int) -> None:
        self.latency = [m for m in self.latency if m.window_end_ns > since_ns]
        self.cost = [m for m in self.cost if m.window_end_ns > since_ns]
        self.dns = [m for m in self.dns if m.window_end_ns > since_ns]
        self.health = [m for m in self.health if m.window_end_ns > since_ns]
        self.alerts = {
            k: a for k, a in self.alerts.items() if a.status == "firing" or a.time_ns > since_ns
        }

    def pairs(self, namespace: str | None = None) -> list[PairRow]:
        groups: dict[tuple[str, str, str], list[TcpLatencyMetric]] = {}
        for m in self.latency:
            if _ns_ok(namespace, m.client_workload, m.server_workload):
                key = (m.client_workload, m.server_workload, m.service or "-")
                groups.setdefault(key, []).append(m)
        rows = []
        for (client, server, service), ms in groups.items():
            row = PairRow(client, server, service)
            for m in ms:
                row.connections += m.connections
                row.failed += m.failed_connections
                for name, n in m.outcomes.items():
                    if name != "closed":
                        row.outcomes[name] = row.outcomes.get(name, 0) + n
            sketch = _merge(m.connect_latency_sketch for m in ms)
            row.p50_ms, row.p99_ms = _ms(sketch, 0.5), _ms(sketch, 0.99)
            rows.append(row)
        return rows

    def costs(self, namespace: str | None = None) -> list[CostRow]:
        rows: dict[tuple[str, str, str, str, str], CostRow] = {}
        for m in self.cost:
            if not _ns_ok(namespace, m.source_workload, m.destination_workload):
                continue
            key = (
                m.source_workload,
                m.destination_workload,
                m.source_zone or "?",
                m.destination_zone or "?",
                m.cost_class,
            )
            row = rows.setdefault(key, CostRow(*key))
            row.connections += m.connections
            row.bytes += m.bytes_source_to_destination + m.bytes_destination_to_source
            row.usd += m.cost_usd
        return list(rows.values())

    def paths(self, namespace: str | None = None) -> list[PathRow]:
        """Paths are not namespaced: traffic of every namespace shares them. A namespace
        selects the paths its workloads used; the figures stay the whole path's."""
        groups: dict[tuple[str, str, str], list[PathHealthMetric]] = {}
        for m in self.health:
            groups.setdefault((m.scope, m.source, m.destination), []).append(m)
        rows = []
        for (scope, source, destination), ms in groups.items():
            row = PathRow(scope, source, destination)
            for m in ms:
                row.connections += m.connections
                row.failed += m.failed_connections
                for name, n in m.failures.items():
                    row.failures[name] = row.failures.get(name, 0) + n
                row.resets += m.resets
                row.connect_timeouts += m.connect_timeouts
                row.syn_retransmits += m.syn_retransmits
                row.retrans_segs += m.retrans_segs
                row.segs_out += m.segs_out
                row.services.update(m.services)
            if not _ns_ok(namespace, *_service_ends(row.services)):
                continue
            sketch = _merge(m.rtt_sketch for m in ms)
            row.rtt_p50_ms, row.rtt_p99_ms = _ms(sketch, 0.5), _ms(sketch, 0.99)
            rows.append(row)
        return rows

    def dns_rows(self, namespace: str | None = None) -> list[DnsRow]:
        groups: dict[tuple[str, str], list[DnsMetric]] = {}
        for m in self.dns:
            if _ns_ok(namespace, m.client_workload, m.server):
                groups.setdefault((m.client_workload, m.server), []).append(m)
        rows = []
        for (client, server), ms in groups.items():
            row = DnsRow(client, server)
            for m in ms:
                row.queries += m.queries
                row.failed += m.failed
                row.noise += m.search_noise
                row.timeouts += m.timeouts
            row.p99_ms = _ms(_merge(m.latency_sketch for m in ms), 0.99)
            rows.append(row)
        return rows

    def firing(self, namespace: str | None = None) -> list[AlertEvent]:
        return [
            a
            for a in self.alerts.values()
            if a.status == "firing" and _ns_ok(namespace, *a.affected_workloads)
        ]
