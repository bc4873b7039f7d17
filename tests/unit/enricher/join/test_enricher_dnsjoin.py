"""The DNS joiner's adapter from the enricher's metadata index to the pure DNS join."""

from __future__ import annotations

import time

from enricher.join.classify import AddressClassifier, parse_cidrs
from enricher.join.dnsjoin import IndexDnsLookups, join_dns
from enricher.join.state import MetadataState
from flowscope.records import RawDnsQuery
from flowscope.records.metadata import NodeMeta, PodMeta

S = 1_000_000_000
T0 = time.time_ns() - 60 * S


def _state() -> MetadataState:
    state = MetadataState()
    state.upsert(NodeMeta(name="node-a", zone="za", region="r", addresses=[]), T0)
    state.upsert(NodeMeta(name="node-b", zone="zb", region="r", addresses=[]), T0)
    for uid, ip, ns, name, node in (
        ("app", "10.244.1.5", "shop", "web", "node-b"),
        ("dns", "10.244.2.9", "kube-system", "coredns", "node-a"),
    ):
        state.upsert(
            PodMeta(
                uid=uid,
                name=f"{name}-1",
                namespace=ns,
                node=node,
                ips=[ip],
                start_time_ns=T0,
                workload_kind="Deployment",
                workload_name=name,
            ),
            T0,
        )
    return state


def _query(**kw: object) -> RawDnsQuery:
    base: dict[str, object] = dict(
        node="node-b",
        role="client",
        time_ns=T0 + 5 * S,
        response_time_ns=T0 + 5 * S + 900_000,
        latency_us=900,
        family=4,
        transport="udp",
        local_addr="10.244.1.5",
        local_port=40001,
        remote_addr="10.244.2.9",
        remote_port=53,
        cgroup_id=1,
        cgroup_path=None,
        pod_uid="app",
        container_id=None,
        txid=7,
        query_name="db.shop.svc.cluster.local",
        query_type="A",
        outcome="answered",
        rcode="NXDOMAIN",
        answer_count=0,
        search_expansion=True,
        asked_name="db",
    )
    base.update(kw)
    return RawDnsQuery(**base)  # type: ignore[arg-type]


def test_client_query_to_cluster_dns_pod_names_both_ends_and_zones() -> None:
    lookups = IndexDnsLookups(_state(), AddressClassifier(parse_cidrs("10.244.0.0/16", "c")))
    out = join_dns(_query(), lookups)
    assert (out.client.workload_name, out.client.zone) == ("web", "zb")
    assert (out.server.workload_name, out.server.zone) == ("coredns", "za")
    assert out.server_class == "cluster_dns" and out.peer_class == "cross_zone"
    assert out.client_observed and out.search_expansion and out.asked_name == "db"


def test_upstream_server_on_the_internet() -> None:
    lookups = IndexDnsLookups(_state(), AddressClassifier(parse_cidrs("10.244.0.0/16", "c")))
    out = join_dns(_query(remote_addr="8.8.8.8"), lookups)
    assert out.server_class == "upstream" and out.peer_class == "internet"
    assert out.server.attribution == "external"


def test_host_process_and_unknown_owner_are_told_apart() -> None:
    lookups = IndexDnsLookups(_state(), AddressClassifier(parse_cidrs("10.244.0.0/16", "c")))
    host = join_dns(_query(pod_uid=None, cgroup_path="/system.slice/nscd.service"), lookups)
    assert (host.client.attribution, host.client.zone) == ("host", "zb")
    gone = join_dns(_query(pod_uid=None, cgroup_path=None), lookups)  # cgroup not found
    assert gone.client.attribution == "unresolved"
