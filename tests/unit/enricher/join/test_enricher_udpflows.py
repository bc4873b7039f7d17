"""The pure UDP join: orientation by port, both ends named, Service backends, duplicates."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from enricher_records import T0, S

from enricher.join.enrich import DEFAULT_CLASSIFIER
from enricher.join.state import MetadataState
from enricher.join.udpflows import enrich_udp
from flowscope.records import RawUdpFlow, udp_local_is_client
from flowscope.records.metadata import NodeMeta, PodMeta, ServiceMeta


def _pod(uid: str, ips: list[str], node: str, name: str) -> PodMeta:
    return PodMeta(
        uid=uid,
        name=f"{name}-{uid}",
        namespace="media",
        node=node,
        ips=ips,
        start_time_ns=T0,
        workload_kind="Deployment",
        workload_name=name,
    )


@pytest.fixture
def state() -> MetadataState:
    st = MetadataState(early_tolerance_ns=0)
    for meta in (
        NodeMeta(name="node-a", zone="z-a", region="r1", addresses=["192.168.1.1"]),
        NodeMeta(name="node-b", zone="z-b", region="r1", addresses=["192.168.1.2"]),
        _pod("c1", ["10.0.1.1", "fd00::1:1"], "node-a", "player"),
        _pod("s1", ["10.0.2.1", "fd00::2:1"], "node-b", "streamer"),
        ServiceMeta(name="stream", namespace="media", cluster_ips=["10.96.0.20"]),
    ):
        st.upsert(meta, T0)
    return st


def flow(**overrides: Any) -> RawUdpFlow:
    fields: dict[str, Any] = dict(
        node="node-a",
        window_start_ns=T0 + S,
        window_end_ns=T0 + 31 * S,
        family=4,
        local_addr="10.0.1.1",
        local_port=45000,
        remote_addr="10.0.2.1",
        remote_port=5004,
        cgroup_id=7,
        cgroup_path="kubepods/podc1/abc",
        pod_uid="c1",
        container_id="abc",
        bytes_out=1_000,
        packets_out=10,
        bytes_in=50_000,
        packets_in=40,
    )
    fields.update(overrides)
    return RawUdpFlow(**fields)


@pytest.mark.parametrize(
    "local, remote, client",
    [
        (45000, 5004, True),
        (5004, 45000, False),
        (53, 33000, False),
        (1000, 2000, False),
        (2000, 1000, True),
        (40000, 40000, True),
        (61000, 443, True),
    ],
)
def test_the_server_is_the_end_on_a_fixed_port(local: int, remote: int, client: bool) -> None:
    assert udp_local_is_client(local, remote) is client


def test_client_side_flow_names_both_ends_and_zones(state: MetadataState) -> None:
    out = enrich_udp(flow(), state, DEFAULT_CLASSIFIER)
    assert (out.observer_role, out.client_observed, out.transport) == ("client", True, "udp")
    assert (out.client.pod_uid, out.client.zone, out.client.port) == ("c1", "z-a", 45000)
    assert (out.server.pod_uid, out.server.workload_name, out.server.zone) == (
        "s1",
        "streamer",
        "z-b",
    )
    assert (out.bytes_client_to_server, out.bytes_server_to_client) == (1_000, 50_000)
    assert (out.packets_client_to_server, out.packets_server_to_client) == (10, 40)
    assert out.peer_class == "cross_zone"
    assert (out.start_time_ns, out.end_time_ns) == (T0 + S, T0 + 31 * S)


def test_server_side_flow_is_flipped_and_marked_a_duplicate(state: MetadataState) -> None:
    raw = flow(
        node="node-b",
        local_addr="10.0.2.1",
        local_port=5004,
        remote_addr="10.0.1.1",
        remote_port=45000,
        pod_uid="s1",
        bytes_out=50_000,
        packets_out=40,
        bytes_in=1_000,
        packets_in=10,
    )
    out = enrich_udp(raw, state, DEFAULT_CLASSIFIER)
    assert (out.observer_role, out.client_observed) == ("server", True)
    assert (out.client.pod_uid, out.server.pod_uid) == ("c1", "s1")
    assert (out.bytes_client_to_server, out.bytes_server_to_client) == (1_000, 50_000)
    assert (out.packets_client_to_server, out.packets_server_to_client) == (10, 40)


def test_server_side_flow_from_the_internet_is_not_client_observed(state: MetadataState) -> None:
    raw = flow(
        node="node-b",
        local_addr="10.0.2.1",
        local_port=5004,
        remote_addr="93.184.216.34",
        remote_port=50000,
        pod_uid="s1",
    )
    out = enrich_udp(raw, state, DEFAULT_CLASSIFIER)
    assert (out.observer_role, out.client_observed) == ("server", False)
    assert (out.client.attribution, out.peer_class) == ("external", "internet")


def test_flow_to_a_service_names_the_backend_and_the_service(state: MetadataState) -> None:
    raw = flow(original_remote_addr="10.96.0.20", original_remote_port=80)
    out = enrich_udp(raw, state, DEFAULT_CLASSIFIER)
    assert (out.server.pod_uid, out.server.service, out.server.address) == (
        "s1",
        "stream",
        "10.0.2.1",
    )


def test_ipv6_flow(state: MetadataState) -> None:
    raw = flow(family=6, local_addr="fd00::1:1", remote_addr="fd00::2:1")
    out = enrich_udp(raw, state, DEFAULT_CLASSIFIER)
    assert out.network_type == "ipv6"
    assert (out.client.pod_uid, out.server.pod_uid, out.server.address) == ("c1", "s1", "fd00::2:1")


def test_an_internet_server_is_named_by_the_clients_dns_answer(state: MetadataState) -> None:
    from enricher.join.dnsnames import DnsNames
    from flowscope.records import RawDnsQuery

    names = DnsNames()
    names.add(
        RawDnsQuery(
            node="node-a",
            role="client",
            time_ns=T0,
            response_time_ns=T0 + 1000,
            latency_us=1,
            family=4,
            transport="udp",
            local_addr="10.0.1.1",
            local_port=5353,
            remote_addr="10.96.0.10",
            remote_port=53,
            cgroup_id=7,
            cgroup_path="p",
            pod_uid="c1",
            container_id="abc",
            txid=1,
            query_name="stun.example.com",
            query_type="A",
            outcome="answered",
            rcode="NOERROR",
            answer_count=1,
            answer_addrs=["8.8.4.4"],
            answer_ttl_s=60,
        )
    )
    out = enrich_udp(
        flow(remote_addr="8.8.4.4", remote_port=3478), state, DEFAULT_CLASSIFIER, names
    )
    assert out.server_domain == "stun.example.com" and out.server.attribution == "external"
    inside = enrich_udp(flow(), state, DEFAULT_CLASSIFIER, names)
    assert inside.server_domain is msgspec.UNSET  # a pod is named by the metadata, not DNS
