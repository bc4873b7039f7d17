"""The pure join: orientation, zones, peer classes, host and unresolved ends."""

from __future__ import annotations

import msgspec
import pytest
from enricher_records import T0, S, raw_connection

from enricher.join.enrich import enrich
from enricher.join.state import MetadataState
from flowscope.records import Endpoint
from flowscope.records.metadata import NodeMeta, PodMeta, ServiceMeta


def _pod(uid: str, ip: str, node: str, kind: str, name: str, ns: str = "shop") -> PodMeta:
    return PodMeta(
        uid=uid,
        name=f"{name}-{uid}",
        namespace=ns,
        node=node,
        ips=[ip],
        start_time_ns=T0,
        workload_kind=kind,
        workload_name=name,
    )


@pytest.fixture
def state() -> MetadataState:
    st = MetadataState(early_tolerance_ns=0)
    for meta in (
        NodeMeta(name="node-a", zone="z-a", region="r1", addresses=["192.168.1.1"]),
        NodeMeta(name="node-b", zone="z-b", region="r1", addresses=["192.168.1.2"]),
        NodeMeta(name="node-c", zone="z-c", region="r2", addresses=["192.168.1.3"]),
        NodeMeta(name="node-x", zone=None, region=None, addresses=["192.168.1.4"]),
        _pod("c1", "10.0.1.1", "node-a", "Deployment", "frontend"),
        _pod("s1", "10.0.2.1", "node-b", "StatefulSet", "db"),
        _pod("s2", "10.0.1.2", "node-a", "DaemonSet", "cache"),
        _pod("s3", "10.0.3.1", "node-c", "Pod", "far"),
        _pod("s4", "10.0.4.1", "node-x", "CronJob", "batch"),
        ServiceMeta(name="api", namespace="shop", cluster_ips=["10.96.0.10"]),
    ):
        st.upsert(meta, T0)
    return st


raw = raw_connection


def test_client_side_record_names_both_ends(state: MetadataState) -> None:
    out = enrich(raw(), state)
    assert out.client == Endpoint(
        address="10.0.1.1",
        port=40000,
        attribution="pod",
        pod_name="frontend-c1",
        pod_uid="c1",
        namespace="shop",
        workload_kind="Deployment",
        workload_name="frontend",
        deployment="frontend",
        node="node-a",
        zone="z-a",
        region="r1",
        container_id="abc",
        pid=123,
        command="curl",
    )
    assert out.server == Endpoint(
        address="10.0.2.1",
        port=5432,
        attribution="pod",
        pod_name="db-s1",
        pod_uid="s1",
        namespace="shop",
        workload_kind="StatefulSet",
        workload_name="db",
        statefulset="db",
        node="node-b",
        zone="z-b",
        region="r1",
    )
    assert out.bytes_client_to_server == 100 and out.bytes_server_to_client == 2000
    assert out.peer_class == "cross_zone"
    assert out.client_observed is True
    assert out.observer_node == "node-a" and out.observer_role == "client"
    assert out.network_type == "ipv4" and out.transport == "tcp"
    assert (out.start_time_ns, out.end_time_ns) == (T0 + 10 * S, T0 + 11 * S)
    assert (out.connect_latency_us, out.srtt_us, out.retrans_segs) == (300, 150, 1)
    assert out.client.workload_key() == "shop/Deployment/frontend"
    # The wire names follow OpenTelemetry.
    wire = msgspec.json.decode(msgspec.json.encode(out))
    assert wire["client"]["k8s.pod.name"] == "frontend-c1"
    assert wire["server"]["cloud.availability_zone"] == "z-b"
    assert wire["flowscope.peer.class"] == "cross_zone"
    assert wire["start_time_unix_nano"] == T0 + 10 * S


def test_server_side_record_is_flipped(state: MetadataState) -> None:
    r = raw(
        node="node-b",
        role="server",
        local_addr="10.0.2.1",
        local_port=5432,
        remote_addr="10.0.1.1",
        remote_port=40000,
        pod_uid="s1",
        bytes_sent=2000,
        bytes_received=100,
        connect_latency_us=None,
    )
    out = enrich(r, state)
    assert out.client.pod_uid == "c1" and out.client.port == 40000
    assert out.client.pid is None  # the process belongs to the observing (server) side
    assert out.server.pod_uid == "s1" and out.server.pid == 123
    assert out.bytes_client_to_server == 100 and out.bytes_server_to_client == 2000
    assert out.client_observed is True  # the client pod has its own collector
    assert out.observer_role == "server"
    assert out.peer_class == "cross_zone"


def test_server_side_with_external_client_is_not_client_observed(state: MetadataState) -> None:
    r = raw(role="server", remote_addr="8.8.4.4", local_port=443, remote_port=5555)
    out = enrich(r, state)
    assert out.client.attribution == "external"
    assert out.client_observed is False
    assert out.peer_class == "internet"
    assert out.client.workload_key() == "external/8.8.4.4"


def test_unknown_role_treats_local_as_client(state: MetadataState) -> None:
    out = enrich(raw(role="unknown"), state)
    assert out.client.pod_uid == "c1" and out.server.pod_uid == "s1"
    assert out.observer_role == "unknown" and out.client_observed is True


@pytest.mark.parametrize(
    ("remote", "peer", "attribution"),
    [
        ("10.0.1.2", "same_zone", "pod"),  # DaemonSet pod on the same node
        ("10.0.2.1", "cross_zone", "pod"),
        ("10.0.3.1", "cross_region", "pod"),
        ("10.0.4.1", "unknown", "pod"),  # its node has no zone label
        ("192.168.1.2", "cross_zone", "node"),
        ("10.50.0.1", "private", "unresolved"),
        ("fd12::1", "private", "unresolved"),
        ("1.1.1.1", "internet", "external"),
        ("2606:4700::1111", "internet", "external"),
        ("10.96.0.10", "unknown", "unresolved"),  # a ClusterIP: service known, pod not
    ],
)
def test_peer_classes(state: MetadataState, remote: str, peer: str, attribution: str) -> None:
    family = 6 if ":" in remote else 4
    out = enrich(raw(remote_addr=remote, family=family), state)
    assert out.server.attribution == attribution
    assert out.peer_class == peer


def test_remote_attributes_by_kind(state: MetadataState) -> None:
    ds = enrich(raw(remote_addr="10.0.1.2"), state).server
    assert (ds.daemonset, ds.deployment, ds.statefulset) == ("cache", None, None)
    cron = enrich(raw(remote_addr="10.0.4.1"), state).server
    assert (cron.workload_kind, cron.workload_name) == ("CronJob", "batch")
    node = enrich(raw(remote_addr="192.168.1.2"), state).server
    assert (node.node, node.zone, node.region) == ("node-b", "z-b", "r1")
    assert node.workload_key() == "node/node-b"
    svc = enrich(raw(remote_addr="10.96.0.10"), state).server
    assert svc.workload_key() == "shop/Service/api"


def test_host_process_is_named_by_the_collectors_node(state: MetadataState) -> None:
    out = enrich(raw(pod_uid=None, container_id=None, local_addr="192.168.1.1"), state)
    assert out.client == Endpoint(
        address="192.168.1.1",
        port=40000,
        attribution="host",
        node="node-a",
        zone="z-a",
        region="r1",
        pid=123,
        command="curl",
    )
    assert out.client.workload_key() == "node/node-a"
    assert out.peer_class == "cross_zone"


def test_socket_whose_cgroup_was_not_found_is_unresolved_not_host(state: MetadataState) -> None:
    """The collector found no cgroup (already removed): the owner is unknown, not the host."""
    out = enrich(raw(pod_uid=None, container_id=None, cgroup_path=None), state)
    assert out.client.attribution == "unresolved"
    assert (out.client.node, out.client.zone) == ("node-a", "z-a")


def test_pod_uid_without_metadata_is_unresolved_not_host(state: MetadataState) -> None:
    out = enrich(raw(pod_uid="nobody"), state)
    assert out.client.attribution == "unresolved"
    assert out.client.pod_uid == "nobody"
    assert out.client.zone == "z-a"  # the collector's node is still known


def test_remote_lookup_uses_the_connection_start_time(state: MetadataState) -> None:
    # The IP 10.0.9.9 belonged to "old" until T0+100s, then to "new".
    old = msgspec.structs.replace(
        _pod("old", "10.0.9.9", "node-b", "Deployment", "gone"), end_time_ns=T0 + 100 * S
    )
    new = msgspec.structs.replace(
        _pod("new", "10.0.9.9", "node-c", "Deployment", "next"), start_time_ns=T0 + 200 * S
    )
    state.upsert(old, T0)
    state.upsert(new, T0 + 200 * S)
    before = enrich(raw(remote_addr="10.0.9.9", start_time_ns=T0 + 50 * S), state)
    after = enrich(raw(remote_addr="10.0.9.9", start_time_ns=T0 + 250 * S), state)
    between = enrich(raw(remote_addr="10.0.9.9", start_time_ns=T0 + 150 * S), state)
    assert before.server.workload_name == "gone" and before.peer_class == "cross_zone"
    assert after.server.workload_name == "next" and after.peer_class == "cross_region"
    assert between.server.attribution == "unresolved" and between.peer_class == "private"


def test_ipv6_record(state: MetadataState) -> None:
    out = enrich(raw(family=6, local_addr="fd00::1", remote_addr="::ffff:10.0.2.1"), state)
    assert out.network_type == "ipv6"
    assert out.server.pod_uid == "s1"  # IPv4-mapped address resolves to the IPv4 pod
    assert out.server.address == "::ffff:10.0.2.1"  # the address is reported as seen
