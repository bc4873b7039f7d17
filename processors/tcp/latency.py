"""Latency and pair-total records from a closed window's cells (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field

from flowscope.records import FAILURE_OUTCOMES, TcpLatencyMetric, TcpPairMetric
from processors.core.sketch import QuantileSketch
from processors.tcp.connections import ClosedWindow


@dataclass
class _Group:
    client_namespace: str | None
    server_namespace: str | None
    connect: QuantileSketch
    rtt: QuantileSketch
    connections: int = 0
    bytes_c2s: int = 0
    bytes_s2c: int = 0
    retrans_segs: int = 0
    segs_out: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    client_zones: set[str] = field(default_factory=set)
    server_zones: set[str] = field(default_factory=set)
    peer_classes: set[str] = field(default_factory=set)
    server_domain: str | None = None


def _groups(window: ClosedWindow, with_service: bool) -> dict[tuple[str, ...], _Group]:
    groups: dict[tuple[str, ...], _Group] = {}
    for key, cell in window.cells.items():
        server = key.server_workload
        if with_service and key.server_domain is not None:
            # A server outside the cluster that DNS named: its addresses are one server.
            server = f"{server.split('/', 1)[0]}/{key.server_domain}"
        gkey: tuple[str, ...] = (key.client_workload, server)
        if with_service:
            gkey += (key.service or "",)
        g = groups.get(gkey)
        if g is None:
            alpha = cell.connect_sketch.alpha
            g = groups[gkey] = _Group(
                cell.client_namespace,
                cell.server_namespace,
                QuantileSketch(alpha),
                QuantileSketch(alpha),
            )
        g.connections += cell.connections
        g.bytes_c2s += cell.bytes_client_to_server
        g.bytes_s2c += cell.bytes_server_to_client
        g.retrans_segs += cell.retrans_segs
        g.segs_out += cell.segs_out
        g.connect.merge(cell.connect_sketch)
        g.rtt.merge(cell.rtt_sketch)
        for outcome, n in cell.outcomes.items():
            g.outcomes[outcome] = g.outcomes.get(outcome, 0) + n
        if key.client_zone is not None:
            g.client_zones.add(key.client_zone)
        if key.server_zone is not None:
            g.server_zones.add(key.server_zone)
        g.peer_classes.add(key.peer_class)
        if with_service and key.server_domain is not None:
            g.server_domain = key.server_domain
    return groups


def _q(sketch: QuantileSketch, q: float) -> float | None:
    return sketch.quantile(q) if sketch.count else None


def latency_id(start_ns: int, partition: int, client: str, server: str, service: str) -> str:
    return f"tcp.latency|{start_ns}|{partition}|{client}|{server}|{service}"


def latency_metrics(window: ClosedWindow) -> list[TcpLatencyMetric]:
    out = []
    for (client, server, service), g in sorted(_groups(window, with_service=True).items()):
        failed = sum(n for o, n in g.outcomes.items() if o in FAILURE_OUTCOMES)
        out.append(
            TcpLatencyMetric(
                metric_id=latency_id(window.start_ns, window.partition, client, server, service),
                window_start_ns=window.start_ns,
                window_end_ns=window.end_ns,
                source_partition=window.partition,
                client_workload=client,
                server_workload=server,
                service=service or None,
                client_namespace=g.client_namespace,
                server_namespace=g.server_namespace,
                connections=g.connections,
                failed_connections=failed,
                outcomes=dict(sorted(g.outcomes.items())),
                failure_rate=failed / g.connections if g.connections else None,
                connect_latency_p50_us=_q(g.connect, 0.5),
                connect_latency_p90_us=_q(g.connect, 0.9),
                connect_latency_p99_us=_q(g.connect, 0.99),
                rtt_p50_us=_q(g.rtt, 0.5),
                rtt_p90_us=_q(g.rtt, 0.9),
                rtt_p99_us=_q(g.rtt, 0.99),
                retrans_segs=g.retrans_segs,
                segs_out=g.segs_out,
                retransmission_rate=g.retrans_segs / g.segs_out if g.segs_out else None,
                connect_latency_sketch=g.connect.to_dict() if g.connect.count else None,
                rtt_sketch=g.rtt.to_dict() if g.rtt.count else None,
                server_domain=g.server_domain,
            )
        )
    return out


def pair_metrics(window: ClosedWindow) -> list[TcpPairMetric]:
    """The spine's per workload pair totals (metrics.tcp.pairs), one per pair and partition."""
    out = []
    for (client, server), g in sorted(_groups(window, with_service=False).items()):
        has = g.connect.count > 0
        out.append(
            TcpPairMetric(
                window_start_ns=window.start_ns,
                window_end_ns=window.end_ns,
                client_workload=client,
                server_workload=server,
                client_namespace=g.client_namespace,
                server_namespace=g.server_namespace,
                client_zones=sorted(g.client_zones),
                server_zones=sorted(g.server_zones),
                peer_classes=sorted(g.peer_classes),
                connections=g.connections,
                bytes_client_to_server=g.bytes_c2s,
                bytes_server_to_client=g.bytes_s2c,
                connect_latency_p50_us=g.connect.quantile(0.5) if has else None,
                connect_latency_p99_us=g.connect.quantile(0.99) if has else None,
                connect_latency_sketch=g.connect.to_dict() if has else None,
                metric_id=f"tcp.pairs|{window.start_ns}|{window.partition}|{client}|{server}",
                source_partition=window.partition,
            )
        )
    return out
