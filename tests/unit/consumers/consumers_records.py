"""Records for the consumers' tests: enriched connections and metric records."""

from __future__ import annotations

from flowscope.records import Endpoint, EnrichedTcpConnection

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
