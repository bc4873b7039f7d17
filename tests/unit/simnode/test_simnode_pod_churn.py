"""Pure parts of pod deletion and IP reuse: claiming a given address, terminating pods."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest

from simnode.cluster import claim_ip
from simnode.errors import SimNodeError
from simnode.objects import cluster_objects, pod_object
from simnode.spec import Node, PodMeta, ServiceMeta, ServicePort

NET = ipaddress.IPv4Network("10.244.0.0/16")
NODE = Node("node-a1", "zone-a", "region-1", "172.18.0.2", "11111111-1111-1111-1111-111111111111")
POD = PodMeta(
    name="web-7d9f8c6b5x-abcde",
    namespace="shop",
    uid="uid-1",
    labels={"app": "web", "pod-template-hash": "7d9f8c6b5x"},
    node=NODE,
    ip="10.244.7.2",
    container_name="web",
    container_id="ab" * 32,
    image="img:1",
    qos="besteffort",
    start_time="2024-05-01T10:00:00Z",
    deployment="web",
    template_hash="7d9f8c6b5x",
)
SVC = ServiceMeta("web", "shop", "svc-uid", "10.96.0.10", {"app": "web"}, (ServicePort(80, 80),))


def test_claim_ip_takes_the_address_out_of_the_free_list() -> None:
    free = [ipaddress.IPv4Address("10.244.7.2"), ipaddress.IPv4Address("10.244.7.3")]
    assert claim_ip(free, "10.244.7.3", NET, set()) == "10.244.7.3"
    assert free == [ipaddress.IPv4Address("10.244.7.2")]
    # An address outside the free list (e.g. released long ago) is fine too.
    assert claim_ip(free, "10.244.9.9", NET, set()) == "10.244.9.9"
    assert len(free) == 1


@pytest.mark.parametrize(
    ("ip", "message"),
    [
        ("10.245.0.2", "not a host address"),
        ("10.244.0.0", "not a host address"),
        ("10.244.255.255", "not a host address"),
        ("nonsense", "not an IPv4 address"),
        ("10.244.7.2", "held by a live pod"),
    ],
)
def test_claim_ip_refuses_bad_or_taken_addresses(ip: str, message: str) -> None:
    with pytest.raises(SimNodeError, match=message):
        claim_ip([], ip, NET, {"10.244.7.2"})


def test_a_deleted_pod_is_written_as_terminating() -> None:
    live = pod_object(POD, "salt")
    assert "deletionTimestamp" not in live["metadata"]
    gone = pod_object(replace(POD, deletion_time="2024-05-01T10:00:07Z"), "salt")
    assert gone["metadata"]["deletionTimestamp"] == "2024-05-01T10:00:07Z"
    assert gone["metadata"]["deletionGracePeriodSeconds"] == 0
    assert gone["status"]["podIP"] == POD.ip  # the address it held until then


def test_a_deleted_pod_is_no_replica_and_no_endpoint() -> None:
    new = replace(POD, name="web-7d9f8c6b5x-fghjk", uid="uid-2")
    old = replace(POD, deletion_time="2024-05-01T10:00:07Z")
    lst = cluster_objects([NODE], [old, new], [SVC], created="2024-05-01T09:00:00Z", salt="s")
    items = {(i["kind"], i["metadata"]["name"]): i for i in lst["items"]}
    assert ("Pod", old.name) in items and ("Pod", new.name) in items
    assert items[("Deployment", "web")]["spec"]["replicas"] == 1
    [slice_] = [i for i in lst["items"] if i["kind"] == "EndpointSlice"]
    assert [e["targetRef"]["uid"] for e in slice_["endpoints"]] == ["uid-2"]
