"""DNS names of internet servers: time-aware, per pod then per node, bounded."""

from __future__ import annotations

import msgspec

from enricher.join.classify import AddressClassifier
from enricher.join.dnsnames import DnsNames
from enricher.join.render import Renderer
from enricher.join.state import MetadataState
from flowscope.records import EnrichedTcpConnection, RawDnsQuery, RawTcpConnection
from flowscope.records.metadata import NodeMeta, PodMeta

S = 1_000_000_000
T0 = 1_700_000_000 * S


def answer(
    name: str, addrs: list[str], t: int, ttl: int = 30, uid: str | None = "a", node: str = "n1"
) -> RawDnsQuery:
    return RawDnsQuery(
        node=node,
        role="client",
        time_ns=t,
        response_time_ns=t + 1000,
        latency_us=1,
        family=4,
        transport="udp",
        local_addr="10.0.0.1",
        local_port=5353,
        remote_addr="10.0.0.53",
        remote_port=53,
        cgroup_id=1,
        cgroup_path="p",
        pod_uid=uid,
        container_id="c",
        txid=1,
        query_name=name,
        query_type="A",
        outcome="answered",
        rcode="NOERROR",
        answer_count=len(addrs),
        answer_addrs=addrs,
        answer_ttl_s=ttl,
    )


def test_one_name_two_addresses_and_one_address_two_names() -> None:
    names = DnsNames()
    names.add(answer("api.example.com", ["1.1.1.1", "1.1.1.2"], T0))
    assert names.lookup("n1", "a", "1.1.1.1", T0 + S) == "api.example.com"
    assert names.lookup("n1", "a", "1.1.1.2", T0 + S) == "api.example.com"
    names.add(answer("cdn.example.net", ["1.1.1.2"], T0 + 2 * S))
    # The name asked last before the connect wins; before that lookup the older one holds.
    assert names.lookup("n1", "a", "1.1.1.2", T0 + 3 * S) == "cdn.example.net"
    assert names.lookup("n1", "a", "1.1.1.2", T0 + S) == "api.example.com"
    assert names.counters.named_by_pod == 4


def test_ttl_expiry_and_no_lookup_are_counted_apart() -> None:
    names = DnsNames()
    names.add(answer("short.test", ["2.2.2.2"], T0, ttl=2))
    assert names.lookup("n1", "a", "2.2.2.2", T0 + 1 * S) == "short.test"
    assert names.lookup("n1", "a", "2.2.2.2", T0 + 3 * S) is None
    assert names.lookup("n1", "a", "9.9.9.9", T0 + S) is None
    assert names.lookup("n1", "a", "2.2.2.2", T0 - S) is None  # before the lookup
    c = names.counters
    assert (c.named_by_pod, c.expired, c.no_name) == (1, 2, 1)


def test_own_pod_first_then_same_node_never_other_nodes() -> None:
    names = DnsNames()
    names.add(answer("theirs.test", ["3.3.3.3"], T0 + S, uid="b"))
    names.add(answer("mine.test", ["3.3.3.3"], T0, uid="a"))
    assert names.lookup("n1", "a", "3.3.3.3", T0 + 2 * S) == "mine.test"
    assert names.lookup("n1", None, "3.3.3.3", T0 + 2 * S) == "theirs.test"  # a host process
    assert names.lookup("n2", "a", "3.3.3.3", T0 + 2 * S) is None
    assert names.counters.named_by_node == 1


def test_bound_per_node_evicts_least_recently_answered() -> None:
    names = DnsNames(max_addresses_per_node=2)
    names.add(answer("a.test", ["4.4.4.1"], T0))
    names.add(answer("b.test", ["4.4.4.2"], T0))
    names.add(answer("a.test", ["4.4.4.1"], T0 + S))  # answered again: most recent now
    names.add(answer("c.test", ["4.4.4.3"], T0 + S))
    assert len(names) == 2 and names.counters.evicted_addresses == 1
    assert names.lookup("n1", "a", "4.4.4.2", T0 + 2 * S) is None
    assert names.lookup("n1", "a", "4.4.4.1", T0 + 2 * S) == "a.test"


def test_hashed_names_are_not_used() -> None:
    names = DnsNames()
    hashed = msgspec.structs.replace(answer("x", ["5.5.5.5"], T0), name_privacy="hashed")
    assert names.add(hashed) == 0 and names.counters.answers_unusable == 1


def _state() -> MetadataState:
    st = MetadataState(early_tolerance_ns=0)
    st.upsert(NodeMeta(name="n1", zone="z1", region="r", addresses=["192.168.0.1"]), T0)
    pod = PodMeta(
        uid="a",
        name="p-a",
        namespace="ns",
        node="n1",
        ips=["10.0.0.1"],
        start_time_ns=T0,
        workload_kind="Deployment",
        workload_name="w",
    )
    st.upsert(pod, T0)
    return st


def _tcp(remote: str, role: str = "client") -> RawTcpConnection:
    return RawTcpConnection(
        node="n1",
        start_time_ns=T0 + S,
        end_time_ns=T0 + 2 * S,
        role=role,
        family=4,  # type: ignore[arg-type]
        local_addr="10.0.0.1",
        local_port=40000,
        remote_addr=remote,
        remote_port=443,
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


def test_fast_paths_and_reference_name_the_server_alike() -> None:
    names = DnsNames()
    names.add(answer("api.example.com", ["8.8.8.8"], T0))
    st = _state()
    raws = [_tcp("8.8.8.8"), _tcp("8.8.4.4"), _tcp("8.8.8.8", role="server"), _tcp("10.0.0.1")]
    for native in (True, False):
        r = Renderer(st, AddressClassifier(), native=native, names=names)
        fast = r.render_many(raws)
        ref = [r.reference(raw) for raw in raws]
        assert [f.value for f in fast] == [x.value for x in ref]
        decoded = [msgspec.json.decode(f.value, type=EnrichedTcpConnection) for f in fast]
        domains = [d.server_domain for d in decoded]
        assert domains == ["api.example.com", msgspec.UNSET, msgspec.UNSET, msgspec.UNSET]
        assert b'"server.address":"api.example.com"}' in fast[0].value
