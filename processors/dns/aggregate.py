"""DNS metrics per (client workload, DNS server, query name group) over tumbling windows. Pure.

Rules, the same as for connections (processors/tcp/connections.py) where they apply:

- **Each query once.** Client-side records count; a server-side record counts only when
  ``client_observed`` is False (no collector saw the client). Skipped: ``duplicates_skipped``.
- **Event time** is the query's time (its first packet). A query's record leaves the
  collector only when it is answered or timed out, so it trails the newest answered queries
  by up to the collector's DNS timeout: the DNS grace must be longer than that timeout.
- **Failures** (:data:`FAILURE_RCODES`, timeouts, malformed, NXDOMAIN of a name that is not a
  search-path expansion). NXDOMAIN of an expansion is ``search_noise``: the resolver moves on
  to the next search domain, nothing failed. ``failure_rate`` leaves the noise out of the
  denominator, so that a pod with ``ndots:5`` and three search domains has the same rate as
  one resolving fully-qualified names.
- **Per source partition** (state dropped exactly on revoke) and published once per window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from flowscope import SCHEMA_VERSION
from flowscope.records import DnsMetric, DnsServerClass, EnrichedDnsQuery
from processors.core.sketch import DEFAULT_ALPHA, QuantileSketch
from processors.core.windows import ClosedWindow, PartitionWindows, unsupported_version

# Answers that mean the server could not or would not resolve the name.
FAILURE_RCODES = frozenset({"SERVFAIL", "REFUSED"})
NameGrouping = Literal["suffix", "asked", "name", "none"]
NAME_GROUPINGS: tuple[str, ...] = get_args(NameGrouping)
HASHED_GROUP = "(hashed)"
DROPPED_GROUP = "(dropped)"
NO_NAME_GROUP = "(none)"
ALL_GROUP = "*"


@dataclass(frozen=True)
class NameGroups:
    """How query names are grouped (a setting).

    - ``suffix``: the last ``labels`` labels of the name the application asked for (the
      query name when unknown), e.g. ``example.com``; names in the cluster domain keep the
      service: ``api.shop.svc.cluster.local``. Search-path expansions of a name therefore
      land in the group of the name they expand.
    - ``asked``: the name the application asked for (the query name when unknown).
    - ``name``: the query name as sent (each expansion its own group).
    - ``none``: one group.

    Hashed names are grouped by their hash under ``asked``/``name`` and as ``(hashed)`` under
    ``suffix`` (a hash has no labels); dropped names as ``(dropped)``.
    """

    mode: NameGrouping = "suffix"
    labels: int = 2
    cluster_domain: str = "cluster.local"

    def __post_init__(self) -> None:
        if self.mode not in NAME_GROUPINGS:
            raise ValueError(f"DNS name grouping {self.mode!r}: use one of {NAME_GROUPINGS}")
        if self.labels < 1:
            raise ValueError(f"DNS name group labels must be >= 1, got {self.labels}")

    def group(self, record: EnrichedDnsQuery) -> str:
        mode = self.mode
        if mode == "none":
            return ALL_GROUP
        if record.name_privacy == "dropped":
            return DROPPED_GROUP
        name = record.query_name if mode == "name" else (record.asked_name or record.query_name)
        if name is None:
            return NO_NAME_GROUP
        if mode != "suffix":
            return name.lower()
        if record.name_privacy == "hashed":
            return HASHED_GROUP
        return self.suffix(name)

    def suffix(self, name: str) -> str:
        labels = name.lower().rstrip(".").split(".")
        domain = self.cluster_domain.split(".")
        n = len(domain)
        # <service>.<namespace>.svc.<cluster domain>: the service is the useful group.
        if len(labels) >= n + 3 and labels[-n:] == domain and labels[-n - 1] == "svc":
            return ".".join(labels[-n - 3 :])
        return ".".join(labels[-self.labels :])


@dataclass(frozen=True, slots=True)
class DnsCellKey:
    client_workload: str
    server: str
    server_class: DnsServerClass
    name_group: str


@dataclass(slots=True)
class DnsCell:
    client_namespace: str | None
    server_service: str | None
    latency: QuantileSketch
    queries: int = 0
    timeouts: int = 0
    malformed: int = 0
    rcodes: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    expansions: int = 0
    search_noise: int = 0
    retransmissions: int = 0
    truncated: int = 0


ClosedDnsWindow = ClosedWindow[DnsCellKey, DnsCell]


def failure_reason(record: EnrichedDnsQuery) -> str | None:
    """Why the query failed ("timeout", "malformed", an rcode), or None: it did not."""
    if record.outcome != "answered":
        return record.outcome
    rcode = record.rcode
    if rcode in FAILURE_RCODES:
        return rcode
    if rcode == "NXDOMAIN" and record.search_expansion is not True:
        return rcode
    return None


class DnsAggregator(PartitionWindows[EnrichedDnsQuery, DnsCellKey, DnsCell]):
    """Tumbling windows of ``window_ns`` per partition, closed ``grace_ns`` after their end."""

    def __init__(
        self,
        window_ns: int,
        grace_ns: int,
        alpha: float = DEFAULT_ALPHA,
        names: NameGroups | None = None,
    ) -> None:
        super().__init__(window_ns, grace_ns, alpha)
        self.names = names or NameGroups()

    def add(self, partition: int, record: EnrichedDnsQuery) -> int | None:
        """Aggregate one record. Returns its window's start, or None when it was skipped
        (duplicate end, or late). Raises InvalidRecord and changes nothing if unusable."""
        if record.schema_version != SCHEMA_VERSION:
            raise self._reject(unsupported_version("EnrichedDnsQuery", record.schema_version))
        latency = record.latency_us
        if (latency is not None and latency < 0) or record.attempts < 1 or record.time_ns < 0:
            raise self._reject(
                f"negative latency, time or attempts: latency_us={latency} "
                f"time_ns={record.time_ns} attempts={record.attempts}"
            )
        duplicate = record.observer_role != "client" and record.client_observed
        window = self._cells(partition, record.time_ns, duplicate)
        if window is None:
            return None
        start, cells = window
        server = record.server
        key = DnsCellKey(
            record.client.workload_key(),
            server.workload_key(),
            record.server_class,
            self.names.group(record),
        )
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = DnsCell(
                record.client.namespace, server.service, QuantileSketch(self.alpha)
            )
        cell.queries += 1
        outcome = record.outcome
        if outcome == "answered":
            rcode = record.rcode or "UNKNOWN"
            cell.rcodes[rcode] = cell.rcodes.get(rcode, 0) + 1
            if latency is not None:
                cell.latency.add(latency)
        elif outcome == "timeout":
            cell.timeouts += 1
        else:
            cell.malformed += 1
        reason = failure_reason(record)
        if reason is not None:
            cell.failures[reason] = cell.failures.get(reason, 0) + 1
        if record.search_expansion:
            cell.expansions += 1
            if outcome == "answered" and record.rcode == "NXDOMAIN":
                cell.search_noise += 1
        cell.retransmissions += record.attempts - 1
        if record.response_truncated:
            cell.truncated += 1
        return self._counted(partition, start)


def dns_id(start_ns: int, partition: int, key: DnsCellKey) -> str:
    return (
        f"dns|{start_ns}|{partition}|{key.client_workload}|{key.server}|{key.server_class}|"
        f"{key.name_group}"
    )


def _q(sketch: QuantileSketch, q: float) -> float | None:
    return sketch.quantile(q) if sketch.count else None


def dns_metrics(window: ClosedDnsWindow) -> list[DnsMetric]:
    out = []
    for key in sorted(
        window.cells, key=lambda k: (k.client_workload, k.server, k.server_class, k.name_group)
    ):
        c = window.cells[key]
        failed = sum(c.failures.values())
        decisive = c.queries - c.search_noise
        out.append(
            DnsMetric(
                metric_id=dns_id(window.start_ns, window.partition, key),
                window_start_ns=window.start_ns,
                window_end_ns=window.end_ns,
                source_partition=window.partition,
                client_workload=key.client_workload,
                client_namespace=c.client_namespace,
                server=key.server,
                server_class=key.server_class,
                server_service=c.server_service,
                name_group=key.name_group,
                queries=c.queries,
                answered=sum(c.rcodes.values()),
                timeouts=c.timeouts,
                malformed=c.malformed,
                rcodes=dict(sorted(c.rcodes.items())),
                failed=failed,
                failures=dict(sorted(c.failures.items())),
                failure_rate=failed / decisive if decisive else None,
                search_expansions=c.expansions,
                search_noise=c.search_noise,
                retransmissions=c.retransmissions,
                truncated=c.truncated,
                latency_p50_us=_q(c.latency, 0.5),
                latency_p90_us=_q(c.latency, 0.9),
                latency_p99_us=_q(c.latency, 0.99),
                latency_sketch=c.latency.to_dict() if c.latency.count else None,
            )
        )
    return out
