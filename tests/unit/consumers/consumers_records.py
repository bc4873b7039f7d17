"""Records for the consumers' tests: enriched connections and metric records."""

from __future__ import annotations

from flowscope.records import Endpoint, EnrichedTcpConnection, PathHealthMetric
from processors.core.sketch import sketch_of

S = 1_000_000_000
T0 = 1_700_000_000 * S


def pod(name: str, namespace: str, zone: str = "zone-a") -> Endpoint:
    return Endpoint(
        address=f"10.0.{abs(hash(name)) % 250}.{abs(hash(namespace)) % 250}",
        port=8080,
        attribution="pod",
        namespace=namespace,
        workload_kind="Deployment",
        workload_name=name,
        zone=zone,
    )


def conn(
    client: Endpoint, server: Endpoint, outcome: str = "closed", end_ns: int = T0, port: int = 1
) -> EnrichedTcpConnection:
    return EnrichedTcpConnection(
        start_time_ns=end_ns - 1000,
        end_time_ns=end_ns,
        observer_node="n1",
        observer_role="client",
        client_observed=True,
        network_type="ipv4",
        client=Endpoint(**{**_fields(client), "port": port}),
        server=server,
        bytes_client_to_server=100,
        bytes_server_to_client=200,
        connect_latency_us=50,
        srtt_us=10,
        retrans_segs=0,
        peer_class="same_zone",
        outcome=outcome,  # type: ignore[arg-type]
    )


def _fields(end: Endpoint) -> dict[str, object]:
    return {f: getattr(end, f) for f in end.__struct_fields__}


def health(
    mid: str,
    scope: str,
    source: str,
    destination: str,
    *,
    conns: int = 10,
    failures: dict[str, int] | None = None,
    resets: int = 0,
    syn: int = 0,
    retrans: int = 0,
    segs: int = 100,
    dropped: int = 0,
    rtts_us: list[float] | None = None,
    services: tuple[str, ...] = ("shop/Deployment/fe -> shop/Deployment/db",),
    partition: int = 0,
    start_ns: int = T0,
) -> PathHealthMetric:
    """A path health record as processors/pathhealth.py publishes one."""
    fails = failures or {}
    sk = sketch_of(rtts_us) if rtts_us else None
    return PathHealthMetric(
        metric_id=mid,
        window_start_ns=start_ns,
        window_end_ns=start_ns + 10 * S,
        source_partition=partition,
        scope=scope,
        source=source,  # type: ignore[arg-type]
        destination=destination,
        connections=conns,
        failed_connections=sum(fails.values()),
        failures=fails,
        resets=resets,
        connect_timeouts=fails.get("connect_timeout", 0),
        syn_retransmits=syn,
        connections_with_syn_retransmits=min(syn, conns),
        retrans_segs=retrans,
        segs_out=segs,
        retransmission_rate=retrans / segs if segs else None,
        rtt_p50_us=sk.quantile(0.5) if sk else None,
        rtt_p90_us=sk.quantile(0.9) if sk else None,
        rtt_p99_us=sk.quantile(0.99) if sk else None,
        rtt_sketch=sk.to_dict() if sk else None,
        services=sorted(services),
        dropped_packets=dropped,
    )
