"""The time-aware IP index and the metadata state built on it (IP reuse, deletes, grace)."""

from __future__ import annotations

import msgspec

from enricher.join.index import MetadataIndex, canonical_ip
from enricher.join.state import MetadataState
from flowscope.records.metadata import MetaCodec, NodeMeta, PodMeta, ServiceMeta

S = 1_000_000_000
T0 = 1_700_000_000 * S


def pod(
    uid: str, ip: str, start: int, end: int | None = None, name: str | None = None, **kw: object
) -> PodMeta:
    return PodMeta(
        uid=uid,
        name=name or f"pod-{uid}",
        namespace="ns",
        node="node-a",
        ips=[ip],
        start_time_ns=start,
        end_time_ns=end,
        workload_kind="Deployment",
        workload_name=f"wl-{uid}",
        **kw,  # type: ignore[arg-type]
    )


def test_reused_ip_goes_to_the_pod_that_held_it_at_that_time() -> None:
    idx = MetadataIndex(early_tolerance_ns=0)
    idx.upsert_pod(pod("old", "10.0.0.5", T0, T0 + 100 * S))
    idx.upsert_pod(pod("new", "10.0.0.5", T0 + 200 * S))
    assert idx.lookup("10.0.0.5", T0 + 50 * S) == idx.pod("old")
    found = idx.lookup("10.0.0.5", T0 + 250 * S)
    assert isinstance(found, PodMeta) and found.uid == "new"
    # Between the two pods the IP belonged to nobody: the new pod must not get that traffic.
    assert idx.lookup("10.0.0.5", T0 + 150 * S) is None
    assert idx.lookup("10.0.0.5", T0 - S) is None
    # The end is exclusive.
    assert idx.lookup("10.0.0.5", T0 + 100 * S) is None


def test_newer_holder_wins_when_the_old_end_was_never_reported() -> None:
    idx = MetadataIndex(early_tolerance_ns=0)
    idx.upsert_pod(pod("old", "10.0.0.5", T0))  # still "running" as far as we know
    idx.upsert_pod(pod("new", "10.0.0.5", T0 + 200 * S))
    assert idx.lookup("10.0.0.5", T0 + 10 * S) == idx.pod("old")
    assert idx.lookup("10.0.0.5", T0 + 300 * S) == idx.pod("new")


def test_early_tolerance_covers_clock_skew_only_when_the_ip_was_free() -> None:
    idx = MetadataIndex(early_tolerance_ns=S)
    idx.upsert_pod(pod("a", "10.0.0.7", T0 + 10 * S))
    assert idx.lookup("10.0.0.7", T0 + 10 * S - S // 2) == idx.pod("a")
    assert idx.lookup("10.0.0.7", T0 + 5 * S) is None


def test_update_replaces_the_interval_and_remove_forgets() -> None:
    idx = MetadataIndex(early_tolerance_ns=0)
    idx.upsert_pod(pod("a", "10.0.0.8", T0))
    idx.upsert_pod(pod("a", "10.0.0.9", T0))  # the same pod with a new IP
    assert idx.lookup("10.0.0.8", T0 + S) is None
    assert idx.lookup("10.0.0.9", T0 + S) == idx.pod("a")
    idx.remove_pod("a")
    assert idx.lookup("10.0.0.9", T0 + S) is None
    assert idx.pod("a") is None


def test_nodes_services_host_network_and_ipv6_spellings() -> None:
    idx = MetadataIndex()
    node = NodeMeta(name="node-a", zone="z1", region="r1", addresses=["192.168.1.10", "fd00::a"])
    svc = ServiceMeta(name="web", namespace="ns", cluster_ips=["10.96.0.10"])
    idx.upsert_node(node)
    idx.upsert_service(svc)
    idx.upsert_pod(pod("hn", "192.168.1.10", T0, host_network=True))
    idx.upsert_pod(pod("v6", "fd00:0:0:0::5", T0))
    assert idx.lookup("192.168.1.10", T0 + S) == node  # hostNetwork: the IP names the node
    assert idx.pod("hn") is not None  # ...but the pod is still known by uid
    assert idx.lookup("::ffff:192.168.1.10", T0) == node
    assert idx.lookup("fd00:0::a", T0) == node
    assert idx.lookup("10.96.0.10", T0) == svc
    assert idx.lookup("fd00::5", T0 + S) == idx.pod("v6")
    assert idx.lookup("8.8.8.8", T0) is None
    idx.remove_node("node-a")
    assert idx.lookup("192.168.1.10", T0) is None
    assert canonical_ip("::FFFF:10.1.2.3") == "10.1.2.3"
    assert canonical_ip("not-an-ip") == "not-an-ip"


def _enc(meta: PodMeta | NodeMeta | ServiceMeta) -> bytes:
    return MetaCodec().encode(meta)


def test_state_tombstone_retires_the_pod_then_grace_purges_it() -> None:
    state = MetadataState(deleted_grace_ns=60 * S, early_tolerance_ns=0)
    p = pod("a", "10.0.0.5", T0)
    assert state.apply(p.key(), _enc(p), T0) == "upserted"
    assert state.apply(p.key(), None, T0 + 100 * S) == "deleted"
    # Late records from before the deletion still resolve; after it they do not.
    assert state.lookup("10.0.0.5", T0 + 99 * S) == state.pod("a")
    assert state.lookup("10.0.0.5", T0 + 101 * S) is None
    assert state.purge(T0 + 150 * S) == 0
    assert state.purge(T0 + 161 * S) == 1
    assert state.pod("a") is None
    assert state.counters.tombstones == 1 and state.counters.pods_purged == 1


def test_state_same_name_new_uid_retires_the_old_pod() -> None:
    state = MetadataState(early_tolerance_ns=0)
    old = pod("u1", "10.0.0.5", T0, name="db-0")
    new = pod("u2", "10.0.0.6", T0 + 100 * S, name="db-0")
    state.apply(old.key(), _enc(old), T0)
    state.apply(new.key(), _enc(new), T0 + 100 * S)
    retired = state.pod("u1")
    assert retired is not None and retired.end_time_ns == T0 + 100 * S
    assert state.lookup("10.0.0.5", T0 + 50 * S) == retired
    assert state.lookup("10.0.0.5", T0 + 150 * S) is None


def test_state_node_service_tombstones_and_bad_values() -> None:
    state = MetadataState()
    node = NodeMeta(name="n", zone="z", region="r", addresses=["192.168.0.1"])
    svc = ServiceMeta(name="s", namespace="ns", cluster_ips=["10.96.0.1"])
    state.apply(node.key(), _enc(node), T0)
    state.apply(svc.key(), _enc(svc), T0)
    assert state.apply("Node/n", None, T0) == "deleted"
    assert state.apply("Service/ns/s", None, T0) == "deleted"
    assert state.lookup("192.168.0.1", T0) is None and state.lookup("10.96.0.1", T0) is None
    assert state.apply("Pod/x/y", b"{not json", T0) == "invalid"
    assert state.apply("Pod/x/y", b'{"kind":"Gadget"}', T0) == "invalid"
    assert state.apply("bogus-key", None, T0) == "invalid"
    future = msgspec.structs.replace(node, v=99)
    assert state.apply(node.key(), _enc(future), T0) == "unsupported_version"
    assert state.counters.invalid == 3 and state.counters.unsupported_version == 1
