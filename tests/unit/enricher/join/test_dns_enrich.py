"""The DNS join (enricher.join.dns_enrich): both ends named, the server classified, fields kept."""

from __future__ import annotations

from typing import Any

import pytest
from msgspec.structs import replace

from enricher.join.dns_enrich import (
    DnsLookups,
    DnsServers,
    ServiceName,
    dns_missing_key,
    enrich_dns,
    fallback_peer_class,
)
from flowscope.codec import JsonCodec
from flowscope.records import Endpoint, EnrichedDnsQuery, RawDnsQuery

T = 1_700_000_000_000_000_000
DNS_VIP = "10.96.0.10"


def pod(
    name: str, ns: str, kind: str, workload: str, node: str, zone: str, service: str | None = None
) -> Endpoint:
    # A template, as the enricher caches them: no address or port.
    return Endpoint(
        address="",
        port=0,
        attribution="pod",
        pod_name=name,
        pod_uid=f"uid-{name}",
        namespace=ns,
        workload_kind=kind,
        workload_name=workload,
        service=service,
        node=node,
        zone=zone,
        region="eu-west-1",
    )


WEB = pod("web-1", "shop", "Deployment", "web", "n1", "eu-west-1a")
COREDNS = pod("coredns-1", "kube-system", "Deployment", "coredns", "n2", "eu-west-1b", "kube-dns")
ODD_DNS = pod("bind-1", "infra", "StatefulSet", "bind", "n1", "eu-west-1a")


class FakeMetadata:
    """An in-memory DnsLookups; records every lookup to check the query time is used."""

    def __init__(self) -> None:
        self.pods = {"uid-web-1": WEB, "uid-coredns-1": COREDNS}
        self.by_ip = {
            "10.1.0.5": WEB,
            "10.1.0.53": COREDNS,
            "10.1.0.99": ODD_DNS,
            DNS_VIP: Endpoint(
                address="",
                port=0,
                attribution="unresolved",
                namespace="kube-system",
                workload_kind="Service",
                workload_name="kube-dns",
                service="kube-dns",
            ),
        }
        self.nodes = {
            n: Endpoint(address="", port=0, attribution="node", node=n, zone=z, region="eu-west-1")
            for n, z in (("n1", "eu-west-1a"), ("n2", "eu-west-1b"))
        }
        self.asked_at: list[int] = []

    def pod_endpoint(self, uid: str) -> Endpoint | None:
        return self.pods.get(uid)

    def node_endpoint(self, name: str) -> Endpoint | None:
        return self.nodes.get(name)

    def endpoint_at(self, addr: str, t_ns: int) -> Endpoint | None:
        self.asked_at.append(t_ns)
        return self.by_ip.get(addr)

    def service_at(self, addr: str, t_ns: int) -> ServiceName | None:
        self.asked_at.append(t_ns)
        return ServiceName("kube-system", "kube-dns") if addr == DNS_VIP else None


def raw(**changes: Any) -> RawDnsQuery:
    base = RawDnsQuery(
        node="n1",
        role="client",
        time_ns=T,
        response_time_ns=T + 2_500_000,
        latency_us=2500,
        family=4,
        transport="udp",
        local_addr="10.1.0.5",
        local_port=40000,
        remote_addr="10.1.0.53",
        remote_port=53,
        original_remote_addr=DNS_VIP,
        cgroup_id=7,
        cgroup_path="kubepods/podx/c1",
        pod_uid="uid-web-1",
        container_id="c1",
        txid=4242,
        query_name="api.example.com.shop.svc.cluster.local",
        query_type="A",
        outcome="answered",
        rcode="NXDOMAIN",
        answer_count=0,
        attempts=2,
        search_expansion=True,
        asked_name="api.example.com",
    )
    return replace(base, **changes)


def test_fake_satisfies_the_protocol() -> None:
    lookups: DnsLookups = FakeMetadata()  # mypy checks the structural match
    assert lookups.service_at(DNS_VIP, T) == ServiceName("kube-system", "kube-dns")


def test_client_query_through_the_dns_service_names_both_ends() -> None:
    meta = FakeMetadata()
    out = enrich_dns(raw(), meta)
    assert out.observer_role == "client" and out.client_observed
    assert out.client.workload_key() == "shop/Deployment/web"
    assert (out.client.address, out.client.port, out.client.container_id) == (
        "10.1.0.5",
        40000,
        "c1",
    )
    assert out.server.workload_key() == "kube-system/Deployment/coredns"
    assert (out.server.address, out.server.port) == ("10.1.0.53", 53)
    assert out.server.service == "kube-dns"
    assert out.server_class == "cluster_dns"
    assert out.dialed_addr == DNS_VIP
    assert out.peer_class == "cross_zone"
    assert meta.asked_at == [T, T]  # the server and the dialed Service at the query's time
    # Query fields copied unchanged.
    assert (out.query_name, out.query_type, out.rcode, out.answer_count) == (
        "api.example.com.shop.svc.cluster.local",
        "A",
        "NXDOMAIN",
        0,
    )
    assert (out.search_expansion, out.asked_name, out.attempts, out.latency_us) == (
        True,
        "api.example.com",
        2,
        2500,
    )
    assert (out.time_ns, out.response_time_ns, out.txid) == (T, T + 2_500_000, 4242)
    # And it survives the wire.
    codec = JsonCodec(EnrichedDnsQuery)
    assert codec.decode(codec.encode(out)) == out


def test_dns_pod_reached_without_nat_is_cluster_dns_by_its_service() -> None:
    out = enrich_dns(raw(original_remote_addr=None), FakeMetadata())
    assert out.server_class == "cluster_dns" and out.dialed_addr is None


def test_unresolved_cluster_ip_is_cluster_dns() -> None:
    # The collector saw no NAT: the record's remote end is the ClusterIP itself.
    out = enrich_dns(raw(remote_addr=DNS_VIP, original_remote_addr=None), FakeMetadata())
    assert out.server_class == "cluster_dns"
    assert out.server.workload_key() == "kube-system/Service/kube-dns"


def test_configured_workload_is_cluster_dns() -> None:
    servers = DnsServers(cluster_dns_workloads=frozenset({"infra/StatefulSet/bind"}))
    query = raw(remote_addr="10.1.0.99", original_remote_addr=None)
    assert enrich_dns(query, FakeMetadata()).server_class == "upstream"
    out = enrich_dns(query, FakeMetadata(), servers)
    assert out.server_class == "cluster_dns" and out.peer_class == "same_zone"


def test_node_local_cache_is_named_as_the_node() -> None:
    out = enrich_dns(raw(remote_addr="169.254.20.10", original_remote_addr=None), FakeMetadata())
    assert out.server_class == "node_local_cache"
    assert out.server.attribution == "node" and out.server.node == "n1"
    assert out.server.address == "169.254.20.10"
    assert out.peer_class == "same_zone"
    assert dns_missing_key(raw(), out) is None


def test_internet_resolver_is_upstream_and_external() -> None:
    out = enrich_dns(raw(remote_addr="8.8.8.8", original_remote_addr=None), FakeMetadata())
    assert out.server_class == "upstream"
    assert out.server.attribution == "external"
    assert out.peer_class == "internet"


def test_caller_classifier_is_used_for_unknown_addresses() -> None:
    seen: list[str] = []

    def classify(addr: str) -> Any:
        seen.append(addr)
        return "private"

    out = enrich_dns(
        raw(remote_addr="8.8.8.8", original_remote_addr=None), FakeMetadata(), classify=classify
    )
    assert out.peer_class == "private" and out.server.attribution == "unresolved"
    assert "8.8.8.8" in seen


def test_server_side_record_of_an_observed_client() -> None:
    out = enrich_dns(
        raw(
            role="server",
            node="n2",
            local_addr="10.1.0.53",
            local_port=53,
            pod_uid="uid-coredns-1",
            remote_addr="10.1.0.5",
            remote_port=40000,
            original_remote_addr=None,
            search_expansion=None,
            asked_name=None,
        ),
        FakeMetadata(),
    )
    assert out.observer_role == "server"
    assert out.client_observed  # the client's own collector reports it: count that one
    assert out.client.workload_key() == "shop/Deployment/web"
    assert out.server.workload_key() == "kube-system/Deployment/coredns"
    assert out.server.port == 53
    assert out.server_class == "cluster_dns"
    assert out.peer_class == "cross_zone"


def test_server_side_record_of_an_outside_client_is_not_observed() -> None:
    out = enrich_dns(
        raw(
            role="server",
            node="n2",
            local_addr="10.1.0.53",
            local_port=53,
            pod_uid="uid-coredns-1",
            remote_addr="1.1.1.1",
            original_remote_addr=None,
        ),
        FakeMetadata(),
    )
    assert not out.client_observed
    assert out.client.attribution == "external" and out.peer_class == "internet"


def test_host_process_and_unknown_pod() -> None:
    meta = FakeMetadata()
    host = enrich_dns(raw(pod_uid=None, container_id=None), meta)
    assert host.client.attribution == "host"
    assert host.client.workload_key() == "node/n1"
    assert host.client.zone == "eu-west-1a"
    unknown = enrich_dns(raw(pod_uid="uid-late"), meta)
    assert unknown.client.attribution == "unresolved" and unknown.client.pod_uid == "uid-late"
    assert dns_missing_key(raw(pod_uid="uid-late"), unknown) == "uid:uid-late"


def test_unknown_private_server_waits_for_metadata() -> None:
    query = raw(remote_addr="10.1.7.7", original_remote_addr=None)
    out = enrich_dns(query, FakeMetadata())
    assert out.server.attribution == "unresolved"
    assert dns_missing_key(query, out) == "ip:10.1.7.7"


@pytest.mark.parametrize(
    ("addr", "cls"),
    [
        ("8.8.8.8", "internet"),
        ("10.0.0.1", "private"),
        ("fd00::1", "private"),
        ("2001:4860:4860::8888", "internet"),
        ("nonsense", "unknown"),
    ],
)
def test_fallback_peer_class(addr: str, cls: str) -> None:
    assert fallback_peer_class(addr) == cls
