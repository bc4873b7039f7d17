# The kubernetes client types every model field as Optional and leaves its config loaders
# untyped; the assertions below are what checks those values.
# mypy: disable-error-code="union-attr, no-untyped-call, arg-type, func-returns-value, operator"
"""The metadata publisher against a real kube-apiserver (built from the official source by
kube/build.sh, with Debian's etcd, started on loopback by kube/apiserver.sh) and the real broker.

Objects are created, relabelled and deleted through the API; the compacted metadata topic is
checked, and read back the way the joiner reads it. The publisher's RBAC (k8s/rbac.yaml) is
applied with a server-side dry run, and for real, to run the publisher as its service account.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubehelp_enricher import (
    TopicReader,
    create_pod,
    node_object,
    start_publisher,
    wait_for,
)
from kubernetes import client
from kubernetes.dynamic import DynamicClient

from enricher.publish.kubeobjects import PodFields
from enricher.publish.kubewatch import ResourceWatch
from flowscope.records.metadata import MetaCodec, NodeMeta, PodMeta, ServiceMeta
from flowscope.topics import Topics

REPO = Path(__file__).resolve().parents[3]
CODEC = MetaCodec()


def test_objects_created_relabelled_and_deleted_reach_the_topic(
    api: client.ApiClient,
    namespace: str,
    nodes: list[str],
    kafka_bootstrap: str,
    topics: Topics,
    reader: Callable[[], TopicReader],
) -> None:
    core, apps, disc = client.CoreV1Api(api), client.AppsV1Api(api), client.DiscoveryV1Api(api)
    n1, n2 = nodes
    core.create_node(node_object(n1, "zone-a", "192.168.90.1"))
    core.create_node(node_object(n2, "zone-b", "192.168.90.2"))
    rs = apps.create_namespaced_replica_set(
        namespace,
        client.V1ReplicaSet(
            metadata=client.V1ObjectMeta(
                name="web-5d8f7",
                owner_references=[
                    client.V1OwnerReference(
                        api_version="apps/v1",
                        kind="Deployment",
                        name="web",
                        uid=str(uuid.uuid4()),
                        controller=True,
                    )
                ],
            ),
            spec=client.V1ReplicaSetSpec(
                selector=client.V1LabelSelector(match_labels={"app": "web"}),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels={"app": "web"}),
                    spec=client.V1PodSpec(containers=[client.V1Container(name="m", image="x")]),
                ),
            ),
        ),
    )
    owner = {"kind": "ReplicaSet", "name": "web-5d8f7", "uid": rs.metadata.uid}
    web = create_pod(core, namespace, "web-5d8f7-abcde", n1, "10.90.1.1", owner)
    create_pod(core, namespace, "solo", n2, "10.90.2.2", None)
    svc = core.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1ServiceSpec(
                selector={"app": "web"}, ports=[client.V1ServicePort(port=80)]
            ),
        ),
    )
    disc.create_namespaced_endpoint_slice(
        namespace,
        client.V1EndpointSlice(
            metadata=client.V1ObjectMeta(
                name="web-abc", labels={"kubernetes.io/service-name": "web"}
            ),
            address_type="IPv4",
            endpoints=[
                client.V1Endpoint(
                    addresses=["10.90.1.1"],
                    target_ref=client.V1ObjectReference(
                        kind="Pod",
                        name=web.metadata.name,
                        namespace=namespace,
                        uid=web.metadata.uid,
                    ),
                )
            ],
        ),
    )

    # The publisher starts after the objects exist: they come from its first list.
    team = "example.com/team"
    pub, stop, thread = start_publisher(
        api, kafka_bootstrap, topics, namespace, pod_fields=PodFields(annotations=frozenset({team}))
    )
    try:
        wait_for(pub.synced.is_set, "the publisher to list everything", 90)
        r = reader()
        web_key, solo_key = f"Pod/{namespace}/web-5d8f7-abcde", f"Pod/{namespace}/solo"
        pod = wait_for(lambda: r.meta(web_key), "the web pod in the topic")
        assert isinstance(pod, PodMeta)
        assert (pod.uid, pod.ips, pod.node) == (web.metadata.uid, ["10.90.1.1"], n1)
        assert (pod.workload_kind, pod.workload_name) == ("Deployment", "web")
        assert pod.services == ["web"] and pod.end_time_ns is None
        solo = r.meta(solo_key)
        assert (solo.workload_kind, solo.workload_name, solo.services) == ("Pod", "solo", [])
        node = r.meta(f"Node/{n1}")
        assert isinstance(node, NodeMeta)
        assert (node.zone, node.region, node.addresses) == ("zone-a", "r1", ["192.168.90.1"])
        service = r.meta(f"Service/{namespace}/web")
        assert isinstance(service, ServiceMeta)
        assert service.cluster_ips == [svc.spec.cluster_ip]
        assert not any(k.startswith(("ReplicaSet/", "EndpointSlice/")) for k in r.latest)

        # The joiner's view of the same topic: the IP names the pod, the ClusterIP the service.
        found = r.state.lookup("10.90.1.1", time.time_ns())
        assert isinstance(found, PodMeta) and found.workload_name == "web"

        # Annotate the pod: the configured key reaches the topic, no other does.
        assert pod.annotations == {}
        annotations = {team: "payments", "kubectl.kubernetes.io/last-applied-configuration": "{}"}
        core.patch_namespaced_pod(
            web.metadata.name, namespace, {"metadata": {"annotations": annotations}}
        )
        wait_for(lambda: r.meta(web_key).annotations == {team: "payments"}, "the team annotation")

        # Relabel a node: its zone changes in the topic.
        core.patch_node(n1, {"metadata": {"labels": {"topology.kubernetes.io/zone": "zone-c"}}})
        wait_for(lambda: r.meta(f"Node/{n1}").zone == "zone-c", "the new zone")
        # A status heartbeat the metadata does not carry writes nothing.
        written = pub.model.counters.written if pub.model else 0
        core.patch_node_status(
            n2, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
        )
        time.sleep(1.5)
        assert pub.model is not None and pub.model.counters.written == written

        # Delete the pod: its interval closes, then a tombstone.
        before_delete = time.time_ns()
        core.delete_namespaced_pod("web-5d8f7-abcde", namespace, grace_period_seconds=0)
        wait_for(
            lambda: (r.poll(), web_key in r.latest and r.latest[web_key] is None)[1],
            "the pod's tombstone",
        )
        last_values = [v for k, v in r.history if k == web_key and v is not None]
        closed = CODEC.decode(last_values[-1])
        assert isinstance(closed, PodMeta) and closed.end_time_ns is not None
        assert closed.end_time_ns >= before_delete - 5_000_000_000
        # The joiner keeps the deleted pod for its grace period, closed.
        retired = r.state.pod(web.metadata.uid)
        assert retired is not None and retired.end_time_ns is not None
        assert r.state.lookup("10.90.1.1", time.time_ns() + 10**9) is None

        core.delete_namespaced_service("web", namespace)
        wait_for(
            lambda: (r.poll(), r.latest.get(f"Service/{namespace}/web", b"") is None)[1],
            "the service's tombstone",
        )
        core.delete_node(n2)
        wait_for(
            lambda: (r.poll(), r.latest.get(f"Node/{n2}", b"") is None)[1], "the node's tombstone"
        )
        m = pub.metrics()
        assert m["publisher_pod_lists_total"] >= 1 and m["publisher_pod_events_total"] >= 2
        assert m["publisher_invalid_objects_total"] == 0
        assert m["publisher_lease_acquired_total"] == 1
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()


def test_restarted_publisher_tombstones_what_was_deleted_meanwhile(
    api: client.ApiClient,
    namespace: str,
    nodes: list[str],
    kafka_bootstrap: str,
    topics: Topics,
    reader: Callable[[], TopicReader],
) -> None:
    core = client.CoreV1Api(api)
    core.create_node(node_object(nodes[0], "zone-a", "192.168.91.1"))
    create_pod(core, namespace, "gone-soon", nodes[0], "10.91.0.1", None)
    pub, stop, thread = start_publisher(api, kafka_bootstrap, topics, None)
    wait_for(pub.synced.is_set, "the first publisher to sync", 90)
    stop.set()
    thread.join(60)
    key = f"Pod/{namespace}/gone-soon"
    assert reader().meta(key) is not None
    core.delete_namespaced_pod("gone-soon", namespace, grace_period_seconds=0)
    create_pod(core, namespace, "new-one", nodes[0], "10.91.0.2", None)

    pub2, stop2, thread2 = start_publisher(api, kafka_bootstrap, topics, None)
    try:
        wait_for(pub2.synced.is_set, "the second publisher to sync", 90)
        r = reader()
        assert r.latest.get(key, b"") is None, "the pod deleted while no publisher ran"
        assert r.meta(f"Pod/{namespace}/new-one") is not None
        # Unchanged objects were not written again.
        assert r.history.count((f"Node/{nodes[0]}", r.latest[f"Node/{nodes[0]}"])) == 1
    finally:
        stop2.set()
        thread2.join(60)


def test_watch_resumes_from_its_version_after_the_stream_drops(
    api: client.ApiClient, nodes: list[str]
) -> None:
    core = client.CoreV1Api(api)
    snapshots: list[list[str]] = []
    events: list[tuple[str, str]] = []
    watch = ResourceWatch(
        "Node",
        core.list_node,
        lambda _k, items: snapshots.append([i["metadata"]["name"] for i in items]),
        lambda _k, t, o: events.append((t, o["metadata"]["name"])),
        watch_timeout_s=30,
    )
    watch.start()
    try:
        wait_for(watch.synced.is_set, "the first list")
        core.create_node(node_object(nodes[0], "zone-a", "192.168.92.1"))
        wait_for(lambda: ("ADDED", nodes[0]) in events, "the ADDED event")
        resp = wait_for(lambda: watch._resp, "an open watch stream")
        resp.shutdown()  # the connection drops
        # Changes made while it reconnects are not lost: it resumes from the last version.
        core.patch_node(nodes[0], {"metadata": {"labels": {"x": "1"}}})
        core.delete_node(nodes[0])
        wait_for(lambda: ("DELETED", nodes[0]) in events, "the DELETED event after reconnecting")
    finally:
        watch.stop()
    assert ("MODIFIED", nodes[0]) in events
    assert watch.counters.errors >= 1 and watch.counters.watches >= 2
    assert watch.counters.lists == 1 and len(snapshots) == 1  # resumed, not relisted


def test_standby_replica_takes_over_when_the_leader_stops(
    api: client.ApiClient,
    namespace: str,
    nodes: list[str],
    kafka_bootstrap: str,
    topics: Topics,
    reader: Callable[[], TopicReader],
) -> None:
    core = client.CoreV1Api(api)
    core.create_node(node_object(nodes[0], "zone-a", "192.168.93.1"))
    a, stop_a, thread_a = start_publisher(api, kafka_bootstrap, topics, namespace, "a")
    wait_for(a.synced.is_set, "replica a to lead and sync", 90)
    b, stop_b, thread_b = start_publisher(api, kafka_bootstrap, topics, namespace, "b")
    try:
        time.sleep(3)  # longer than a retry period: b must still be standing by
        assert b.terms == 0 and not b.synced.is_set()
        lease = client.CoordinationV1Api(api).read_namespaced_lease(
            "flowscope-metadata-publisher", namespace
        )
        assert a.options.lease is not None
        assert lease.spec.holder_identity == a.options.lease.identity
        stop_a.set()
        thread_a.join(60)
        took_over = time.monotonic()
        wait_for(b.synced.is_set, "replica b to take over", 30)
        assert time.monotonic() - took_over < 10
        core.create_node(node_object(nodes[1], "zone-b", "192.168.93.2"))
        r = reader()
        wait_for(lambda: r.meta(f"Node/{nodes[1]}"), "b's writes")
        lease = client.CoordinationV1Api(api).read_namespaced_lease(
            "flowscope-metadata-publisher", namespace
        )
        assert b.options.lease is not None
        assert lease.spec.holder_identity == b.options.lease.identity
        assert lease.spec.lease_transitions >= 1
    finally:
        stop_a.set()
        stop_b.set()
        thread_a.join(60)
        thread_b.join(60)


def _manifests(*names: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in names:
        docs += [d for d in yaml.safe_load_all((REPO / "k8s" / name).read_text()) if d]
    return docs


def test_rbac_manifests_apply_with_a_server_side_dry_run(api: client.ApiClient) -> None:
    dyn = DynamicClient(api)
    docs = _manifests("namespace.yaml", "rbac.yaml")
    kinds = [d["kind"] for d in docs]
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role"} <= set(kinds)
    core = client.CoreV1Api(api)
    try:  # namespaced objects need their namespace to exist, even for a dry run
        core.read_namespace("flowscope")
    except client.ApiException:
        dyn.resources.get(api_version="v1", kind="Namespace").server_side_apply(
            body=docs[0], name="flowscope", field_manager="flowscope-test"
        )
    for doc in docs:
        resource = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        out = resource.server_side_apply(
            body=doc,
            name=doc["metadata"]["name"],
            namespace=doc["metadata"].get("namespace"),
            field_manager="flowscope-test",
            dry_run="All",
        )
        assert out.metadata.name == doc["metadata"]["name"]
    # A dry run stores nothing.
    with pytest.raises(client.ApiException) as err:
        client.RbacAuthorizationV1Api(api).read_cluster_role("flowscope-metadata-publisher")
    assert err.value.status == 404


def test_publisher_runs_with_only_the_rbac_it_is_given(
    api: client.ApiClient,
    nodes: list[str],
    kafka_bootstrap: str,
    topics: Topics,
    reader: Callable[[], TopicReader],
) -> None:
    """Apply k8s/rbac.yaml for real, then run the publisher with its service account's token:
    the manifests grant exactly enough (list/watch everything it reads, the Lease)."""
    dyn = DynamicClient(api)
    docs = _manifests("namespace.yaml", "rbac.yaml")
    for doc in docs:
        dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"]).server_side_apply(
            body=doc,
            name=doc["metadata"]["name"],
            namespace=doc["metadata"].get("namespace"),
            field_manager="flowscope-test",
        )
    core = client.CoreV1Api(api)
    try:
        token = core.create_namespaced_service_account_token(
            "flowscope-metadata-publisher",
            "flowscope",
            client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
            ),
        ).status.token
        admin = api.configuration
        cfg = client.Configuration(host=admin.host, ssl_ca_cert=admin.ssl_ca_cert)
        cfg.api_key = {"BearerToken": f"Bearer {token}"}
        sa_api = client.ApiClient(cfg)
        with pytest.raises(client.ApiException) as err:  # the account really is limited
            client.CoreV1Api(sa_api).list_secret_for_all_namespaces()
        assert err.value.status == 403
        core.create_node(node_object(nodes[0], "zone-a", "192.168.94.1"))
        pub, stop, thread = start_publisher(sa_api, kafka_bootstrap, topics, "flowscope")
        try:
            wait_for(pub.synced.is_set, "the publisher to sync as its service account", 90)
            assert reader().meta(f"Node/{nodes[0]}") is not None
            assert pub.metrics()["publisher_lease_errors_total"] == 0
            assert all(w.counters.errors == 0 for w in pub.watches.values())
        finally:
            stop.set()
            thread.join(60)
    finally:
        for doc in reversed(docs[1:]):  # keep the namespace: deleting it is slow
            resource = dyn.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
            resource.delete(
                name=doc["metadata"]["name"], namespace=doc["metadata"].get("namespace")
            )
