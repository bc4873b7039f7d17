"""Builders of enriched records for the processors' unit tests."""

from __future__ import annotations

from typing import Any

from flowscope.records import Endpoint, EnrichedTcpConnection

S = 1_000_000_000
T0 = 1_700_000_000 * S


def pod(
    workload: str, zone: str | None, namespace: str = "shop", service: str | None = None
) -> Endpoint:
    return Endpoint(
        address=f"10.0.{abs(hash(workload)) % 250}.1",
        port=8080,
        attribution="pod",
        namespace=namespace,
        workload_kind="Deployment",
        workload_name=workload,
        zone=zone,
        region=None if zone is None else zone[:-2],
        service=service,
    )


def external(address: str = "203.0.113.9") -> Endpoint:
    return Endpoint(address=address, port=443, attribution="external")


def conn(
    end_ns: int,
    client: Endpoint,
    server: Endpoint,
    *,
    role: str = "client",
    client_observed: bool = True,
    c2s: int = 0,
    s2c: int = 0,
    latency_us: int | None = None,
    srtt_us: int = 0,
    peer_class: str = "same_zone",
    **more: Any,
) -> EnrichedTcpConnection:
    return EnrichedTcpConnection(
        start_time_ns=end_ns - 1000,
        end_time_ns=end_ns,
        observer_node="n1",
        observer_role=role,  # type: ignore[arg-type]
        client_observed=client_observed,
        network_type="ipv4",
        client=client,
        server=server,
        bytes_client_to_server=c2s,
        bytes_server_to_client=s2c,
        connect_latency_us=latency_us,
        srtt_us=srtt_us,
        retrans_segs=more.pop("retrans_segs", 0),
        peer_class=peer_class,  # type: ignore[arg-type]
        **more,
    )
