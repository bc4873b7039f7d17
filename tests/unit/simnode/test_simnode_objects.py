"""The Kubernetes objects simnode writes, built from metadata only (no kernel objects)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from simnode.objects import cluster_objects, to_yaml, write_yaml
from simnode.spec import Node, PodMeta, ServiceMeta, ServicePort

NODE_A = Node("node-a1", "zone-a", "region-1", "172.18.0.2", "11111111-1111-1111-1111-111111111111")
NODE_B = Node("node-b1", "zone-b", "region-1", "172.18.0.3", "22222222-2222-2222-2222-222222222222")


def pod(name: str, deployment: str | None, node: Node, ip: str, labels: dict[str, str]) -> PodMeta:
    return PodMeta(
        name=name,
        namespace="shop",
        uid=f"uid-{name}",
        labels=labels,
        node=node,
        ip=ip,
        container_name="main",
        container_id="ab" * 32,
        image="img:1",
        qos="burstable",
        start_time="2024-05-01T10:00:00Z",
        deployment=deployment,
        template_hash="7d9f8c6b5x" if deployment else None,
    )


SERVER = pod(
    "server-7d9f8c6b5x-abcde",
    "server",
    NODE_B,
    "10.244.1.2",
    {"app": "server", "pod-template-hash": "7d9f8c6b5x"},
)
BARE = pod("debug", None, NODE_A, "10.244.1.3", {"app": "server", "tier": "x"})
SVC = ServiceMeta(
    "server", "shop", "svc-uid", "10.96.0.10", {"app": "server"}, (ServicePort(80, 8080, "http"),)
)


def build(include_workloads: bool = True) -> dict[str, Any]:
    return cluster_objects(
        [NODE_A, NODE_B],
        [SERVER, BARE],
        [SVC],
        created="2024-05-01T09:00:00Z",
        salt="abc123",
        include_workloads=include_workloads,
    )


def by_kind(lst: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [i for i in lst["items"] if i["kind"] == kind]


def test_list_shape_and_kinds() -> None:
    lst = build()
    assert lst["apiVersion"] == "v1" and lst["kind"] == "List"
    kinds = [i["kind"] for i in lst["items"]]
    assert kinds == [
        "Node",
        "Node",
        "Deployment",
        "ReplicaSet",
        "Pod",
        "Pod",
        "Service",
        "EndpointSlice",
    ]
    slim = build(include_workloads=False)
    assert [i["kind"] for i in slim["items"]] == ["Node", "Node", "Pod", "Pod", "Service"]


def test_node_zone_region_and_internal_ip() -> None:
    node = by_kind(build(), "Node")[1]
    assert node["metadata"]["labels"]["topology.kubernetes.io/zone"] == "zone-b"
    assert node["metadata"]["labels"]["topology.kubernetes.io/region"] == "region-1"
    assert {"type": "InternalIP", "address": "172.18.0.3"} in node["status"]["addresses"]


def test_pod_fields_match_metadata() -> None:
    p = by_kind(build(), "Pod")[0]
    md, spec, status = p["metadata"], p["spec"], p["status"]
    assert md["uid"] == SERVER.uid and md["namespace"] == "shop"
    assert md["labels"] == {"app": "server", "pod-template-hash": "7d9f8c6b5x"}
    owner = md["ownerReferences"][0]
    assert owner["kind"] == "ReplicaSet" and owner["name"] == "server-7d9f8c6b5x"
    assert owner["controller"] is True
    assert spec["nodeName"] == "node-b1"
    assert status["phase"] == "Running" and status["qosClass"] == "Burstable"
    assert status["podIP"] == "10.244.1.2" and status["podIPs"] == [{"ip": "10.244.1.2"}]
    assert status["hostIP"] == "172.18.0.3"
    assert status["startTime"] == "2024-05-01T10:00:00Z"
    cs = status["containerStatuses"][0]
    assert cs["containerID"] == "containerd://" + "ab" * 32


@pytest.mark.parametrize(
    ("runtime", "scheme"), [("containerd", "containerd"), ("crio", "cri-o"), ("docker", "docker")]
)
def test_container_id_uses_the_runtime_scheme(runtime: str, scheme: str) -> None:
    # The kubelet writes "<type>://<id>", type being the name the CRI runtime reports.
    meta = replace(SERVER, runtime=runtime)  # type: ignore[arg-type]
    lst = cluster_objects([NODE_B], [meta], [], created="2024-05-01T09:00:00Z", salt="s")
    [p] = by_kind(lst, "Pod")
    assert p["status"]["containerStatuses"][0]["containerID"] == f"{scheme}://{'ab' * 32}"


def test_bare_pod_has_no_owner() -> None:
    bare = by_kind(build(), "Pod")[1]
    assert "ownerReferences" not in bare["metadata"]


def test_owner_chain_uids_are_consistent() -> None:
    lst = build()
    dep, rs = by_kind(lst, "Deployment")[0], by_kind(lst, "ReplicaSet")[0]
    p = by_kind(lst, "Pod")[0]
    assert rs["metadata"]["name"] == "server-7d9f8c6b5x"
    assert p["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"]
    assert rs["metadata"]["ownerReferences"][0]["uid"] == dep["metadata"]["uid"]
    assert rs["metadata"]["labels"]["pod-template-hash"] == "7d9f8c6b5x"
    assert dep["spec"]["selector"]["matchLabels"] == {"app": "server"}


def test_service_and_endpoint_slice() -> None:
    lst = build()
    svc, eps = by_kind(lst, "Service")[0], by_kind(lst, "EndpointSlice")[0]
    assert svc["spec"]["clusterIP"] == "10.96.0.10"
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}
    ]
    assert eps["metadata"]["labels"] == {"kubernetes.io/service-name": "server"}
    # The bare pod carries app=server too, and is selected: selection is by labels only.
    ips = [e["addresses"][0] for e in eps["endpoints"]]
    assert ips == ["10.244.1.2", "10.244.1.3"]
    assert eps["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]


def test_yaml_round_trip_without_anchors(tmp_path: Path) -> None:
    lst = build()
    text = to_yaml(lst)
    assert "&id" not in text and "*id" not in text
    path = write_yaml(lst, tmp_path / "sub" / "objects.yaml")
    assert yaml.safe_load(path.read_text()) == lst
    assert not list((tmp_path / "sub").glob(".*.tmp"))
