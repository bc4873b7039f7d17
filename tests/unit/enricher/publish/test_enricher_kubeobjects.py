"""Kubernetes YAML -> slim metadata: owner chains, times, nodes, services."""

from __future__ import annotations

import textwrap

import pytest

from enricher.publish.kubeobjects import ObjectFileError, parse_text, parse_time_ns
from flowscope.records.metadata import MetaCodec, NodeMeta, PodMeta, ServiceMeta

T0 = 1_714_557_600 * 1_000_000_000  # 2024-05-01T10:00:00Z


def _pod(name: str, owner: str = "", labels: str = "", extra_status: str = "") -> str:
    return textwrap.dedent(
        f"""\
        - apiVersion: v1
          kind: Pod
          metadata:
            name: {name}
            namespace: shop
            uid: uid-{name}
            creationTimestamp: "2024-05-01T09:59:59Z"
            labels: {{{labels}}}
            annotations: {{big: "not published"}}
            {owner}
          spec:
            nodeName: node-a
            containers: [{{name: c, image: x, env: [{{name: SECRET, value: s}}]}}]
          status:
            phase: Running
            startTime: "2024-05-01T10:00:00Z"
            podIP: 10.0.0.{len(name)}
            podIPs: [{{ip: 10.0.0.{len(name)}}}, {{ip: "fd00::{len(name)}"}}]
            {extra_status}
        """
    )


def _owner(kind: str, name: str) -> str:
    return f"ownerReferences: [{{kind: {kind}, name: {name}, controller: true, uid: x}}]"


def _list(*items: str) -> str:
    body = "".join(textwrap.indent(i, "  ") for i in items)
    return f"apiVersion: v1\nkind: List\nitems:\n{body}"


def _pods(text: str) -> dict[str, PodMeta]:
    return {m.name: m for m in parse_text(text).metas if isinstance(m, PodMeta)}


def test_deployment_pod_without_replicaset_object_strips_template_hash() -> None:
    text = _list(
        _pod("web-7d9f8-abcde", _owner("ReplicaSet", "web-7d9f8"), "pod-template-hash: 7d9f8")
    )
    pod = _pods(text)["web-7d9f8-abcde"]
    assert (pod.workload_kind, pod.workload_name) == ("Deployment", "web")


def test_replicaset_without_matching_hash_stays_a_replicaset() -> None:
    text = _list(_pod("rs-pod", _owner("ReplicaSet", "plain-rs"), "app: x"))
    pod = _pods(text)["rs-pod"]
    assert (pod.workload_kind, pod.workload_name) == ("ReplicaSet", "plain-rs")


def test_replicaset_object_in_file_gives_its_deployment() -> None:
    rs = textwrap.dedent(
        """\
        - kind: ReplicaSet
          apiVersion: apps/v1
          metadata:
            name: api-55
            namespace: shop
            ownerReferences: [{kind: Deployment, name: api-deploy, controller: true}]
        """
    )
    pod = _pods(_list(rs, _pod("api-55-x", _owner("ReplicaSet", "api-55"))))["api-55-x"]
    assert (pod.workload_kind, pod.workload_name) == ("Deployment", "api-deploy")


@pytest.mark.parametrize(
    ("kind", "name", "expected"),
    [
        ("StatefulSet", "db", ("StatefulSet", "db")),
        ("DaemonSet", "agent", ("DaemonSet", "agent")),
        ("Job", "backup-28571234", ("CronJob", "backup")),
        ("Job", "migrate", ("Job", "migrate")),
    ],
)
def test_owner_kinds(kind: str, name: str, expected: tuple[str, str]) -> None:
    pod = _pods(_list(_pod("p", _owner(kind, name))))["p"]
    assert (pod.workload_kind, pod.workload_name) == expected


def test_job_object_without_cronjob_owner_stays_a_job() -> None:
    job = "- kind: Job\n  metadata: {name: nightly-123, namespace: shop}\n"
    pod = _pods(_list(job, _pod("p", _owner("Job", "nightly-123"))))["p"]
    assert (pod.workload_kind, pod.workload_name) == ("Job", "nightly-123")


def test_bare_pod_is_its_own_workload_and_fields_are_slim() -> None:
    pod = _pods(_list(_pod("solo", labels="app: solo")))["solo"]
    assert (pod.workload_kind, pod.workload_name) == ("Pod", "solo")
    assert pod.uid == "uid-solo"
    assert pod.namespace == "shop"
    assert pod.node == "node-a"
    assert pod.ips == ["10.0.0.4", "fd00::4"]
    assert pod.start_time_ns == T0  # startTime wins over creationTimestamp
    assert pod.end_time_ns is None
    assert pod.labels == {"app": "solo"}
    encoded = MetaCodec().encode(pod)
    assert b"SECRET" not in encoded and b"not published" not in encoded
    assert b'"kind":"Pod"' in encoded and b'"v":1' in encoded
    assert MetaCodec().decode(encoded) == pod
    assert pod.key() == "Pod/shop/solo"


def test_finished_pod_ends_at_last_container_finish() -> None:
    status = (
        "containerStatuses: [{name: c, state: {terminated: "
        '{finishedAt: "2024-05-01T10:05:00.5Z"}}}]'
    )
    text = _list(_pod("done", extra_status=status)).replace("phase: Running", "phase: Succeeded")
    pod = _pods(text)["done"]
    assert pod.end_time_ns == T0 + 300_500_000_000


def test_deletion_timestamp_ends_the_pod() -> None:
    text = _list(_pod("going")).replace(
        "uid: uid-going", 'uid: uid-going\n      deletionTimestamp: "2024-05-01T10:01:00Z"'
    )
    # A whole-second time ends the interval at the end of that second.
    assert _pods(text)["going"].end_time_ns == T0 + 61_000_000_000


def test_multi_document_nodes_and_services() -> None:
    text = textwrap.dedent(
        """\
        apiVersion: v1
        kind: Node
        metadata:
          name: node-a
          labels:
            topology.kubernetes.io/zone: eu-west-1a
            topology.kubernetes.io/region: eu-west-1
        status:
          addresses:
          - {type: InternalIP, address: 192.168.1.10}
          - {type: Hostname, address: node-a}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: shop}
        spec:
          clusterIP: 10.96.0.10
          clusterIPs: [10.96.0.10]
          ports: [{port: 80, targetPort: 8080, protocol: TCP}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: headless, namespace: shop}
        spec: {clusterIP: None, ports: [{port: 5432}]}
        ---
        kind: ConfigMap
        metadata: {name: ignored}
        """
    )
    parsed = parse_text(text)
    assert parsed.seen == {"Node": 1, "Service": 2, "ConfigMap": 1}
    node, web, headless = parsed.metas
    assert node == NodeMeta(
        name="node-a", zone="eu-west-1a", region="eu-west-1", addresses=["192.168.1.10"]
    )
    assert node.key() == "Node/node-a"
    assert isinstance(web, ServiceMeta) and web.cluster_ips == ["10.96.0.10"]
    assert [p.port for p in web.ports] == [80]
    assert web.key() == "Service/shop/web"
    assert isinstance(headless, ServiceMeta) and headless.cluster_ips == []


def test_object_without_uid_is_skipped_with_a_reason() -> None:
    parsed = parse_text("kind: Pod\nmetadata: {name: broken, namespace: x}\n")
    assert parsed.metas == []
    assert parsed.skipped and "Pod/broken" in parsed.skipped[0]


def test_not_yaml_fails_loudly() -> None:
    with pytest.raises(ObjectFileError):
        parse_text("kind: [unclosed")


def test_time_keeps_nanoseconds_and_offsets() -> None:
    assert parse_time_ns("2024-05-01T10:00:00.000000001Z") == T0 + 1
    assert parse_time_ns("2024-05-01T12:00:00+02:00") == T0
    with pytest.raises(ObjectFileError):
        parse_time_ns("yesterday")
