"""Images, containers and selected labels on both ends of enriched records."""

from __future__ import annotations

import msgspec

from enricher.join.classify import AddressClassifier
from enricher.join.labels import LabelSelection, image_digest, parse_globs, split_image
from enricher.join.render import Renderer
from enricher.join.state import MetadataState
from enricher.publish.kubeobjects import pod_meta
from flowscope.records import EnrichedTcpConnection, RawTcpConnection
from flowscope.records.metadata import ContainerMeta, NodeMeta, PodMeta

S = 1_000_000_000
T0 = 1_700_000_000 * S
DIGEST = "sha256:" + "ab" * 32


def test_image_references_split_as_the_runtime_reads_them() -> None:
    assert split_image("nginx") == ("nginx", ("latest",))
    assert split_image("registry:5000/team/app:1.2") == ("registry:5000/team/app", ("1.2",))
    assert split_image(f"ghcr.io/x/app@{DIGEST}") == ("ghcr.io/x/app", ())
    assert split_image(f"app:3@{DIGEST}") == ("app", ("3",))
    assert image_digest(f"docker.io/library/nginx@{DIGEST}") == DIGEST
    assert image_digest(DIGEST) == DIGEST
    assert image_digest("nginx:latest") is None and image_digest(None) is None


def test_globs_select_labels_sorted() -> None:
    sel = LabelSelection(parse_globs("app.kubernetes.io/*, team,team"), ("rack",))
    assert sel.pod_globs == ("app.kubernetes.io/*", "team")
    labels = {"team": "pay", "app.kubernetes.io/name": "web", "app": "web", "version": "2"}
    assert list(sel.pod(labels) or {}) == ["app.kubernetes.io/name", "team"]
    assert sel.pod({"app": "x"}) is None and sel.node({"rack": "r1", "os": "l"}) == {"rack": "r1"}


def test_pod_objects_give_containers_with_their_resolved_images() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {
            "nodeName": "n1",
            "containers": [
                {"name": "app", "image": "shop/web:4"},
                {"name": "proxy", "image": "envoy"},
            ],
            "initContainers": [{"name": "init", "image": "busybox"}],
        },
        "status": {
            "podIP": "10.0.0.1",
            "containerStatuses": [{"name": "app", "imageID": f"shop/web@{DIGEST}"}],
        },
    }
    assert pod_meta(pod).containers == [
        ContainerMeta(name="app", image="shop/web:4", image_id=f"shop/web@{DIGEST}"),
        ContainerMeta(name="proxy", image="envoy"),
    ]


def _state(containers: list[ContainerMeta]) -> MetadataState:
    st = MetadataState(early_tolerance_ns=0)
    st.labels = LabelSelection(("team", "app.kubernetes.io/*"), ("rack",))
    for name, rack in (("n1", "r1"), ("n2", "r2")):
        st.upsert(
            NodeMeta(
                name=name, zone="z", region="eu", addresses=[], labels={"rack": rack, "pool": "p"}
            ),
            T0,
        )
    for uid, ip, node, team in (("a", "10.0.0.1", "n1", "web"), ("b", "10.0.0.2", "n2", "db")):
        pod = PodMeta(
            uid=uid,
            name=f"p-{uid}",
            namespace="ns",
            node=node,
            ips=[ip],
            start_time_ns=T0,
            workload_kind="Deployment",
            workload_name=uid,
            labels={"team": team, "other": "x"},
            containers=containers,
        )
        st.upsert(pod, T0)
    return st


def _raw(role: str) -> RawTcpConnection:
    return RawTcpConnection(
        node="n1",
        start_time_ns=T0 + S,
        end_time_ns=T0 + 2 * S,
        role=role,
        family=4,  # type: ignore[arg-type]
        local_addr="10.0.0.1",
        local_port=40000,
        remote_addr="10.0.0.2",
        remote_port=80,
        pid=3,
        comm="c",
        cgroup_id=4,
        cgroup_path="p",
        pod_uid="a",
        container_id="x",
        bytes_sent=5,
        bytes_received=6,
        srtt_us=7,
        retrans_segs=0,
        connect_latency_us=9,
    )


def test_both_ends_carry_image_container_and_labels_on_every_path() -> None:
    st = _state([ContainerMeta(name="app", image="shop/web:4", image_id=f"shop/web@{DIGEST}")])
    for native in (True, False):
        r = Renderer(st, AddressClassifier(), native=native)
        for role in ("client", "server"):
            fast, ref = r.render(_raw(role)), r.reference(_raw(role))
            assert fast.value == ref.value
            e = msgspec.json.decode(fast.value, type=EnrichedTcpConnection)
            local, remote = (e.client, e.server) if role == "client" else (e.server, e.client)
            for end, team, rack in ((local, "web", "r1"), (remote, "db", "r2")):
                assert (end.container_name, end.image_name, end.image_tags, end.image_id) == (
                    "app",
                    "shop/web",
                    ["4"],
                    DIGEST,
                )
                assert end.pod_labels == {"team": team}
                assert end.node_labels == {"rack": rack}
            assert local.container_id == "x"  # still the record's own, after the template
            assert b'"k8s.pod.label":{"team":"web"}' in fast.value


def test_a_pod_with_sidecars_names_no_container() -> None:
    st = _state([ContainerMeta(name="app", image="a"), ContainerMeta(name="proxy", image="b")])
    e = msgspec.json.decode(
        Renderer(st, AddressClassifier()).render(_raw("client")).value, type=EnrichedTcpConnection
    )
    assert (e.server.container_name, e.server.image_name) == (None, None)
    assert e.server.pod_labels == {"team": "db"}
