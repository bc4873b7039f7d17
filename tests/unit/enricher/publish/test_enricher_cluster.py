"""The watch publisher's cluster model: snapshots, events, owners, EndpointSlices, dedupe, prune."""

from __future__ import annotations

from typing import Any

from enricher.publish.cluster import ClusterModel, slim
from enricher.publish.kubeobjects import PodFields
from flowscope.records.metadata import MetaCodec, NodeMeta, PodMeta

CODEC = MetaCodec()
S = 1_000_000_000


def pod(
    name: str, uid: str, ip: str, owner: tuple[str, str] | None = None, **meta: Any
) -> dict[str, Any]:
    refs = [{"kind": owner[0], "name": owner[1], "controller": True, "uid": "o"}] if owner else []
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": uid,
            "labels": {"app": name},
            "annotations": {"secret": "not kept"},
            "ownerReferences": refs,
            "resourceVersion": "7",
            **meta,
        },
        "spec": {"nodeName": "n1", "containers": [{"env": [{"name": "PASSWORD"}]}]},
        "status": {
            "phase": "Running",
            "startTime": "2026-01-01T00:00:00Z",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready"}],
        },
    }


def rs(name: str, deployment: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "ownerReferences": [{"kind": "Deployment", "name": deployment, "controller": True}],
        }
    }


def node(name: str, zone: str, heartbeat: str = "") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "192.168.0.1"}],
            "conditions": [{"type": "Ready", "lastHeartbeatTime": heartbeat}],
        },
    }


def slice_(name: str, service: str, uids: list[str]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "labels": {"kubernetes.io/service-name": service},
        },
        "endpoints": [{"targetRef": {"kind": "Pod", "uid": u}} for u in uids],
    }


def decoded(changes: list[tuple[str, bytes | None]]) -> dict[str, Any]:
    return {k: (CODEC.decode(v) if v is not None else None) for k, v in changes}


def test_slim_keeps_only_what_the_join_reads() -> None:
    kept = slim("Pod", pod("a", "u1", "10.0.0.1"))
    text = repr(kept)
    assert "not kept" not in text and "PASSWORD" not in text and "conditions" not in text
    assert kept["status"]["podIP"] == "10.0.0.1"


def test_pods_get_their_workload_even_when_the_owner_comes_later() -> None:
    m = ClusterModel()
    # The pod arrives first; its ReplicaSet is not known: the name is the best guess.
    first = decoded(
        m.event("Pod", "ADDED", pod("web-abc-1", "u1", "10.0.0.1", ("ReplicaSet", "web-abc")))
    )
    p = first["Pod/ns/web-abc-1"]
    assert (p.workload_kind, p.workload_name) == ("ReplicaSet", "web-abc")
    # The ReplicaSet's list arrives: the pod is written again, now as the Deployment's.
    later = decoded(m.snapshot("ReplicaSet", [rs("web-abc", "web")]))
    assert (later["Pod/ns/web-abc-1"].workload_kind, later["Pod/ns/web-abc-1"].workload_name) == (
        "Deployment",
        "web",
    )
    assert not any(k.startswith("ReplicaSet/") for k in later)


def test_unchanged_objects_are_not_written_again() -> None:
    m = ClusterModel()
    assert m.event("Node", "ADDED", node("n1", "z1", "t1"))
    assert m.event("Node", "MODIFIED", node("n1", "z1", "t2")) == []  # a heartbeat only
    assert m.counters.unchanged == 1
    changed = decoded(m.event("Node", "MODIFIED", node("n1", "z2", "t3")))
    assert isinstance(changed["Node/n1"], NodeMeta) and changed["Node/n1"].zone == "z2"


def test_endpointslices_name_the_services_of_their_pods() -> None:
    m = ClusterModel()
    m.event("Pod", "ADDED", pod("a", "u1", "10.0.0.1"))
    m.event("Pod", "ADDED", pod("b", "u2", "10.0.0.2"))
    out = decoded(m.event("EndpointSlice", "ADDED", slice_("api-x", "api", ["u1", "u2"])))
    assert out["Pod/ns/a"].services == ["api"] and out["Pod/ns/b"].services == ["api"]
    out = decoded(m.event("EndpointSlice", "MODIFIED", slice_("api-x", "api", ["u2"])))
    assert list(out) == ["Pod/ns/a"] and out["Pod/ns/a"].services == []
    out = decoded(m.event("EndpointSlice", "ADDED", slice_("web-y", "web", ["u2"])))
    assert out["Pod/ns/b"].services == ["api", "web"]
    out = decoded(m.event("EndpointSlice", "DELETED", slice_("api-x", "api", ["u2"])))
    assert out["Pod/ns/b"].services == ["web"]


def test_deleted_pod_gets_its_interval_closed_then_a_tombstone() -> None:
    m = ClusterModel()
    m.event("Pod", "ADDED", pod("a", "u1", "10.0.0.1"))
    now = 1_800_000_000 * S
    changes = m.event("Pod", "DELETED", pod("a", "u1", "10.0.0.1"), now_ns=now)
    assert [k for k, _ in changes] == ["Pod/ns/a", "Pod/ns/a"]
    closed, tomb = changes
    meta = CODEC.decode(closed[1] or b"")
    assert isinstance(meta, PodMeta) and meta.end_time_ns == now
    assert tomb[1] is None
    # With a deletionTimestamp (whole seconds), the interval ends at that second's end.
    m.event("Pod", "ADDED", pod("b", "u2", "10.0.0.2"))
    gone = pod("b", "u2", "10.0.0.2", deletionTimestamp="2026-01-01T00:00:10Z")
    closed, _ = m.event("Pod", "DELETED", gone, now_ns=now)
    meta = CODEC.decode(closed[1] or b"")
    assert isinstance(meta, PodMeta) and meta.end_time_ns == 1_767_225_611 * S


def test_snapshot_deletes_what_is_gone_and_prune_clears_stale_topic_keys() -> None:
    m = ClusterModel()
    m.published["Pod/ns/old"] = b"{}"  # read back from the topic; deleted meanwhile
    m.published["Node/gone"] = b"{}"
    m.snapshot("Pod", [pod("a", "u1", "10.0.0.1"), pod("b", "u2", "10.0.0.2")])
    m.snapshot("Node", [node("n1", "z1")])
    out = m.snapshot("Pod", [pod("b", "u2", "10.0.0.2")])  # a relist: "a" went away
    assert [k for k, v in out if v is None] == ["Pod/ns/a"]
    assert m.stale_keys() == ["Node/gone", "Pod/ns/old"]
    assert m.prune() == [("Node/gone", None), ("Pod/ns/old", None)]
    assert m.prune() == []


def test_labels_can_be_left_out() -> None:
    m = ClusterModel(PodFields(labels=False))
    out = decoded(m.event("Pod", "ADDED", pod("a", "u1", "10.0.0.1")))
    assert out["Pod/ns/a"].labels == {}


def test_an_object_that_cannot_be_converted_is_counted_and_skipped() -> None:
    m = ClusterModel()
    bad = pod("a", "u1", "10.0.0.1")
    bad["status"]["startTime"] = "yesterday"
    assert m.event("Pod", "ADDED", bad) == []
    assert m.counters.invalid == 1 and "Pod/ns/a" in (m.counters.last_invalid or "")
