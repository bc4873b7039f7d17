"""The hot path renders exactly the bytes the reference join + codec give, for every kind of end."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest
from enricher_records import T0, raw_connection

from enricher.join.classify import AddressClassifier, parse_cidrs
from enricher.join.enrich import enrich, missing_key
from enricher.join.render import NATIVE_BUILT, Renderer
from enricher.join.state import MetadataState
from flowscope.codec import JsonCodec
from flowscope.records import EnrichedTcpConnection
from flowscope.records.metadata import NodeMeta, PodMeta, ServiceMeta

CODEC = JsonCodec(EnrichedTcpConnection)
CLASSIFIER = AddressClassifier(
    parse_cidrs("10.0.0.0/16,10.96.0.0/12", "c"), parse_cidrs("10.200.0.0/16", "o")
)


def _pod(uid: str, ip: str, node: str | None, kind: str, **kw: Any) -> PodMeta:
    return PodMeta(
        uid=uid,
        name=f"{kind.lower()}-{uid}",
        namespace="shop",
        node=node,
        ips=[ip],
        start_time_ns=T0,
        workload_kind=kind,
        workload_name=f"wl-{uid}",
        **kw,
    )


@pytest.fixture
def state() -> MetadataState:
    st = MetadataState(early_tolerance_ns=0)
    for meta in (
        NodeMeta(name="node-a", zone="z-a", region="r1", addresses=["192.168.1.1"]),
        NodeMeta(name="node-b", zone="z-b", region="r1", addresses=["192.168.1.2"]),
        NodeMeta(name="node-c", zone=None, region=None, addresses=["192.168.1.3"]),
        _pod("c1", "10.0.1.1", "node-a", "Deployment"),
        _pod("s1", "10.0.2.1", "node-b", "StatefulSet"),
        _pod("s2", "10.0.3.1", "node-c", "DaemonSet"),
        _pod("j1", "10.0.4.1", "node-a", "Job"),
        _pod("k1", "10.0.5.1", None, "CronJob"),
        _pod("h1", "192.168.1.2", "node-b", "DaemonSet", host_network=True),
        ServiceMeta(name="api", namespace="shop", cluster_ips=["10.96.0.10"]),
    ):
        st.upsert(meta, T0)
    return st


_raw = raw_connection


def test_the_c_loop_is_built() -> None:
    # Not a skip: without it the enricher runs at a fraction of its speed, and the tests
    # below would compare the reference with itself.
    assert NATIVE_BUILT, (
        "enricher.join._render (enricher/join/_render.c) is not built: run `make native`"
    )


REMOTES = [
    "10.0.2.1",  # pod, other zone
    "10.0.3.1",  # pod on a node without zone
    "10.0.4.1",  # Job pod
    "10.0.5.1",  # CronJob pod with no node
    "::ffff:10.0.2.1",  # IPv4-mapped spelling of a pod
    "192.168.1.2",  # a node (and a hostNetwork pod's address)
    "10.96.0.10",  # a ClusterIP
    "10.0.9.9",  # cluster CIDR, unknown: waits
    "10.200.0.1",  # another cluster
    "172.16.0.1",  # private, outside the cluster
    "8.8.8.8",
    "2606:4700::1111",
    "not-an-address",
]
LOCALS: list[dict[str, Any]] = [
    {},
    {"pod_uid": None, "container_id": None, "local_addr": "192.168.1.1"},  # host process
    {"pod_uid": "no-such-uid"},  # pod without metadata yet
    {"node": "node-z", "pod_uid": None},  # a node without metadata
    {"pod_uid": None, "container_id": None, "cgroup_path": None},  # cgroup not found
    {"pid": 0, "comm": "", "container_id": None},
    {"comm": 'we"ird\\name\u00e9\n'},
    {"connect_latency_us": None, "family": 6, "local_addr": "fd00::1"},
    # An interim record of a connection still open: the copied fields travel along.
    {"interim": True, "sequence": 3, "outcome": "open", "segs_out": 7},
    # A connect the application gave up on after SYN retransmissions.
    {"outcome": "connect_timeout", "syn_retries": 3, "connect_latency_us": None},
]
ROLES = ["client", "server", "unknown"]
# What the client dialed, when the collector saw Service NAT: a ClusterIP, or not a Service.
NATS = [None, "10.96.0.10", "10.0.2.1"]


def test_rendered_bytes_equal_the_reference(state: MetadataState) -> None:
    renderer = Renderer(state, CLASSIFIER)
    assert renderer.native  # the C loop: the tests below exercise its caches
    n = 0
    for remote, local, role, nat in itertools.product(REMOTES, LOCALS, ROLES, NATS):
        nat_fields = (
            {} if nat is None else {"original_remote_addr": nat, "original_remote_port": 80}
        )
        raw = _raw(remote_addr=remote, role=role, **local, **nat_fields)
        want = enrich(raw, state, CLASSIFIER)
        for _ in range(2):  # the second time from the fragment caches
            got = renderer.render(raw)
            assert got.value == CODEC.encode(want), (remote, local, role, nat)
            assert got.key == want.client.workload_key()
            assert got.missing == missing_key(raw, want, CLASSIFIER)
            local_end = want.server if role == "server" else want.client
            assert got.local_attribution == local_end.attribution
            n += 1
    assert n == 2 * len(REMOTES) * len(LOCALS) * len(ROLES) * len(NATS)
    assert msgspec.json.decode(got.value, type=EnrichedTcpConnection) == want
    interim = enrich(_raw(interim=True, sequence=3, outcome="open", segs_out=7), state, CLASSIFIER)
    assert (interim.interim, interim.sequence, interim.outcome, interim.segs_out) == (
        True,
        3,
        "open",
        7,
    )
    timeout = enrich(_raw(outcome="connect_timeout", syn_retries=2), state, CLASSIFIER)
    assert (timeout.outcome, timeout.syn_retries) == ("connect_timeout", 2)


def test_fragments_follow_metadata_changes(state: MetadataState) -> None:
    renderer = Renderer(state, CLASSIFIER)
    raw = _raw()
    before = renderer.render(raw).value
    assert b'"cloud.availability_zone":"z-b"' in before
    # The server's node moves zone: every cached end must be re-rendered.
    state.upsert(NodeMeta(name="node-b", zone="z-q", region="r1", addresses=[]), T0)
    after = renderer.render(raw)
    assert after.value == CODEC.encode(enrich(raw, state, CLASSIFIER))
    assert b'"cloud.availability_zone":"z-q"' in after.value
    # The pod is replaced by another workload under the same uid.
    state.upsert(_pod("s1", "10.0.2.1", "node-b", "Deployment"), T0)
    again = renderer.render(raw)
    assert b'"k8s.deployment.name":"wl-s1"' in again.value
    assert again.value == CODEC.encode(enrich(raw, state, CLASSIFIER))


def _renders_like_the_reference(renderer: Renderer, state: MetadataState, **kw: Any) -> bytes:
    raw = _raw(**kw)
    got = renderer.render(raw)
    want = enrich(raw, state, CLASSIFIER)
    assert got.value == CODEC.encode(want), kw
    assert got.missing == missing_key(raw, want, CLASSIFIER), kw
    return got.value


def test_a_node_change_drops_its_own_and_its_pods_ends_only(state: MetadataState) -> None:
    renderer = Renderer(state, CLASSIFIER)
    host_on_b = {"node": "node-b", "pod_uid": None, "container_id": None}
    cases: list[dict[str, Any]] = [
        {},  # c1 (node-a) -> s1 (node-b)
        {"remote_addr": "192.168.1.1"},  # -> node-a by its address
        {"remote_addr": "192.168.1.2"},  # -> node-b
        host_on_b,
    ]
    for kw in cases:
        _renders_like_the_reference(renderer, state, **kw)
    on_a = state.fragments["c1"]
    # node-b moves zone and changes address; node-a's ends and pods are untouched.
    state.upsert(NodeMeta(name="node-b", zone="z-q", region="r1", addresses=["192.168.1.7"]), T0)
    assert state.fragments.get("c1") is on_a
    assert "s1" not in state.fragments and "h1" not in state.fragments
    out = _renders_like_the_reference(renderer, state)
    assert b'"cloud.availability_zone":"z-q"' in out
    assert b'"z-q"' in _renders_like_the_reference(renderer, state, **host_on_b)
    # Its old address names nobody now, its new one names it.
    old = _renders_like_the_reference(renderer, state, remote_addr="192.168.1.2")
    assert b'"k8s.node.name":"node-b"' not in old
    new = _renders_like_the_reference(renderer, state, remote_addr="192.168.1.7")
    assert b'"k8s.node.name":"node-b"' in new
    # A node that appears later gives its zone to the ends already built without it.
    assert b'"k8s.node.name":"node-z"' in _renders_like_the_reference(
        renderer, state, node="node-z", pod_uid=None
    )
    state.upsert(NodeMeta(name="node-z", zone="z-z", region="r1", addresses=[]), T0)
    assert b'"z-z"' in _renders_like_the_reference(renderer, state, node="node-z", pod_uid=None)
    # Deleted: its pods' ends lose the zone, the rest stays.
    state.apply("Node/node-b", None, T0)
    assert state.fragments.get("c1") is on_a
    assert b'"z-q"' not in _renders_like_the_reference(renderer, state)


def test_a_service_change_drops_its_own_end_only(state: MetadataState) -> None:
    renderer = Renderer(state, CLASSIFIER)
    for kw in ({}, {"remote_addr": "10.96.0.10"}, {"remote_addr": "10.96.0.20"}):
        _renders_like_the_reference(renderer, state, **kw)
    assert renderer.render(_raw(remote_addr="10.96.0.20")).missing == "ip:10.96.0.20"
    pod_ends = {uid: state.fragments[uid] for uid in ("c1", "s1")}
    # A new Service takes the address that was unknown (and shortcut as such).
    state.upsert(ServiceMeta(name="web", namespace="shop", cluster_ips=["10.96.0.20"]), T0)
    assert all(state.fragments.get(uid) is frag for uid, frag in pod_ends.items())
    out = _renders_like_the_reference(renderer, state, remote_addr="10.96.0.20")
    assert b'"k8s.service.name":"web"' in out
    # One moves to another ClusterIP, then the other is deleted.
    state.upsert(ServiceMeta(name="api", namespace="shop", cluster_ips=["10.96.0.11"]), T0)
    assert b'"api"' not in _renders_like_the_reference(renderer, state, remote_addr="10.96.0.10")
    assert b'"api"' in _renders_like_the_reference(renderer, state, remote_addr="10.96.0.11")
    state.apply("Service/shop/web", None, T0)
    gone = renderer.render(_raw(remote_addr="10.96.0.20"))
    assert (gone.missing, b'"web"' in gone.value) == ("ip:10.96.0.20", False)
    _renders_like_the_reference(renderer, state, remote_addr="10.96.0.20")
    assert all(state.fragments.get(uid) is frag for uid, frag in pod_ends.items())


def test_service_nat_names_the_dialed_service_on_the_backend(state: MetadataState) -> None:
    raw = _raw(original_remote_addr="10.96.0.10", original_remote_port=80)
    out = enrich(raw, state, CLASSIFIER)
    assert (out.server.pod_uid, out.server.service) == ("s1", "api")
    assert out.server.address == "10.0.2.1"  # where the packets went
    rendered = Renderer(state, CLASSIFIER).render(raw)
    assert b'"k8s.service.name":"api"' in rendered.value
    # Without NAT the same backend carries no service name.
    assert enrich(_raw(), state, CLASSIFIER).server.service is None


def test_self_check_passes_with_the_current_record_types() -> None:
    from enricher.join.render import self_check

    assert self_check() is None


def test_address_shortcuts_follow_the_index(state: MetadataState) -> None:
    """Addresses no pod held are shortcut for any time: a pod, node or Service taking one
    later must be named from then on, never the cached answer."""
    renderer = Renderer(state, CLASSIFIER)
    unknown, internet = _raw(remote_addr="10.0.9.9"), _raw(remote_addr="8.8.8.8")
    node = _raw(remote_addr="192.168.1.1")
    for raw in (unknown, internet, node, unknown, internet, node):  # twice: from the caches
        got = renderer.render(raw)
        assert got.value == CODEC.encode(enrich(raw, state, CLASSIFIER))
        assert got.missing == missing_key(raw, enrich(raw, state, CLASSIFIER), CLASSIFIER)
    assert renderer.render(unknown).missing == "ip:10.0.9.9"
    assert renderer.render(internet).remote_attribution == "external"
    # A pod takes the unknown address, another the node's address (hostNetwork aside).
    state.upsert(_pod("n1", "10.0.9.9", "node-b", "Deployment"), T0)
    got = renderer.render(unknown)
    assert (got.remote_attribution, got.missing, got.plain) == ("pod", None, True)
    assert got.value == CODEC.encode(enrich(unknown, state, CLASSIFIER))
    # A Service now owns the internet address (odd, but the index says so).
    state.upsert(ServiceMeta(name="odd", namespace="shop", cluster_ips=["8.8.8.8"]), T0)
    got = renderer.render(internet)
    assert b'"k8s.service.name":"odd"' in got.value
    assert got.value == CODEC.encode(enrich(internet, state, CLASSIFIER))


# Addresses at the edges of the C loop's internet path (enricher/join/_render.c, unknown_internet):
# what it takes (a canonical dotted quad outside every non-internet range) and what it must
# leave to Python (other spellings, special-purpose ranges, other clusters, pod addresses).
EDGE_ADDRESSES = [
    "1.2.3.4",
    "9.255.255.255",
    "11.0.0.0",
    "100.63.255.255",
    "100.128.0.0",
    "223.255.255.255",
    "100.64.0.1",
    "169.254.1.1",
    "172.31.255.255",
    "192.0.2.7",
    "198.19.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "0.1.2.3",
    "10.200.3.4",
    "10.0.9.9",
    "01.2.3.4",
    "1.2.3.04",
    "1.2.3",
    "1.2.3.4.5",
    "1.2.3.256",
    "1.2.3.4 ",
    "1..3.4",
    "1.2.3.",
    "1.2.3.1000",
    "0x1.2.3.4",
    "\u0661.2.3.4",
    "34.1.2.3",
]


def test_internet_peers_render_like_the_reference(state: MetadataState) -> None:
    # A pod (and a node) with public addresses, as clusters on public ranges have: their
    # addresses must never be taken for the internet.
    state.upsert(_pod("pub", "34.1.2.3", "node-a", "Deployment"), T0)
    state.upsert(NodeMeta(name="node-p", zone="z-a", region="r1", addresses=["35.1.1.1"]), T0)
    renderer = Renderer(state, CLASSIFIER)
    for addr in [*EDGE_ADDRESSES, "35.1.1.1"]:
        for role in ("client", "server"):
            for _ in range(2):  # the second time from whatever the first one cached
                _renders_like_the_reference(renderer, state, remote_addr=addr, role=role)
    out = renderer.render(_raw(remote_addr="34.1.2.3"))
    assert (out.remote_attribution, out.plain) == ("pod", True)


def test_the_c_loop_names_internet_peers_without_caching_them(state: MetadataState) -> None:
    fresh = AddressClassifier(CLASSIFIER.cluster_cidrs, CLASSIFIER.other_cluster_cidrs)
    c_loop = Renderer(state, fresh, native=True)
    got = c_loop.render(_raw(remote_addr="1.2.3.4"))
    assert (got.remote_attribution, got.missing) == ("external", None)
    assert b'"flowscope.peer.class":"internet"' in got.value
    # Told in C: no shortcut, no per-address answer, no classification kept for it.
    assert "1.2.3.4" not in state.ip_fragments and "1.2.3.4" not in c_loop._unnamed
    assert "1.2.3.4" not in c_loop.classifier._cache
    # The long way (an address the C loop cannot tell alone) caches.
    c_loop.render(_raw(remote_addr="10.0.9.9"))
    assert "10.0.9.9" in state.ip_fragments
    # Once a pod holds an address the C loop would have called internet, it names the pod.
    state.upsert(_pod("pub", "1.2.3.4", "node-a", "Deployment"), T0)
    assert c_loop.render(_raw(remote_addr="1.2.3.4")).remote_attribution == "pod"


def test_both_tiers_render_a_large_mixed_batch_identically(state: MetadataState) -> None:
    c_loop = Renderer(state, CLASSIFIER, native=True)
    py_loop = Renderer(state, CLASSIFIER, native=False)  # the reference
    raws = [
        _raw(
            remote_addr=remote,
            role=role,
            bytes_sent=i * 7919,
            local_port=1 + i % 65535,
            start_time_ns=T0 + i,
            **local,
        )
        for i, (remote, local, role) in enumerate(itertools.product(REMOTES * 3, LOCALS, ROLES))
    ]
    assert c_loop.render_many(raws) == py_loop.render_many(raws)
    assert c_loop.render_many(raws) == py_loop.render_many(raws)  # from the caches
    huge = [_raw(bytes_sent=2**64 - 1, bytes_received=0, srtt_us=2**40)]
    assert c_loop.render_many(huge) == py_loop.render_many(huge)


def test_the_c_loop_reports_bad_input(state: MetadataState) -> None:
    """An unknown address family fails the batch in C (the joiner then renders the records
    one by one and dead-letters the bad one). The codec refuses such a record before the
    join; the reference reads it as IPv6."""
    bad = [_raw(), msgspec.structs.replace(_raw(), family=5)]
    with pytest.raises(KeyError):
        Renderer(state, CLASSIFIER, native=True).render_many(bad)
