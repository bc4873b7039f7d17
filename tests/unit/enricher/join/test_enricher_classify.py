"""Addresses the metadata does not name: cluster, other cluster, private, internet; what waits."""

from __future__ import annotations

from typing import Any

import pytest
from enricher_records import IN_CLUSTER, raw_connection

from enricher.join.classify import OTHER_CLUSTER_PEER, AddressClassifier, parse_cidrs
from enricher.join.enrich import enrich, missing_key
from enricher.join.state import MetadataState
from flowscope.records import RawTcpConnection
from flowscope.records.metadata import NodeMeta, PodMeta, ServiceMeta

S = 1_000_000_000
T0 = 1_700_000_000 * S


def test_parse_cidrs_names_the_bad_one() -> None:
    nets = parse_cidrs("10.244.0.0/16, fd00:10::/56 10.96.0.0/12", "--cluster-cidrs")
    assert [str(n) for n in nets] == ["10.244.0.0/16", "fd00:10::/56", "10.96.0.0/12"]
    assert parse_cidrs("", "x") == ()
    with pytest.raises(ValueError, match=r"--cluster-cidrs: '10.0.0.0/40' is not a CIDR"):
        parse_cidrs("10.0.0.0/8,10.0.0.0/40", "--cluster-cidrs")


@pytest.mark.parametrize(
    ("addr", "cls"),
    [
        ("10.244.3.4", "cluster"),
        ("10.96.0.1", "cluster"),
        ("fd00:10::5", "cluster"),
        ("::ffff:10.244.0.9", "cluster"),
        ("10.200.1.1", "other_cluster"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("127.0.0.1", "private"),
        ("fe80::1%eth0", "private"),
        ("100.64.0.1", "private"),
        ("8.8.8.8", "internet"),
        ("2606:4700::1111", "internet"),
        ("not-an-ip", "invalid"),
    ],
)
def test_classify(addr: str, cls: str) -> None:
    c = AddressClassifier(
        parse_cidrs("10.244.0.0/16,10.96.0.0/12,fd00:10::/56", "c"),
        parse_cidrs("10.200.0.0/16", "o"),
    )
    assert c.classify(addr) == cls
    assert c.classify(addr) == cls  # cached answer is the same


def test_what_is_held_back_depends_on_cluster_cidrs() -> None:
    configured = AddressClassifier(parse_cidrs("10.244.0.0/16", "c"))
    assert configured.holds_back("cluster")
    assert not configured.holds_back("private")
    unconfigured = AddressClassifier()
    assert unconfigured.holds_back("private")
    for cls in ("internet", "other_cluster", "invalid"):
        assert not configured.holds_back(cls)
        assert not unconfigured.holds_back(cls)


def _raw(**kw: Any) -> RawTcpConnection:
    return raw_connection(**{**IN_CLUSTER, **kw})


@pytest.fixture
def state() -> MetadataState:
    st = MetadataState(early_tolerance_ns=0)
    st.upsert(NodeMeta(name="node-a", zone="z-a", region="r", addresses=["192.168.5.1"]), T0)
    st.upsert(
        PodMeta(
            uid="c1",
            name="c1",
            namespace="ns",
            node="node-a",
            ips=["10.244.1.1"],
            start_time_ns=T0,
            workload_kind="Deployment",
            workload_name="front",
        ),
        T0,
    )
    st.upsert(ServiceMeta(name="api", namespace="ns", cluster_ips=["10.96.0.10"]), T0)
    return st


CLASSIFIER = AddressClassifier(
    parse_cidrs("10.244.0.0/16,10.96.0.0/12", "c"), parse_cidrs("10.200.0.0/16", "o")
)


@pytest.mark.parametrize(
    ("remote", "attribution", "peer", "waits"),
    [
        ("10.244.2.1", "unresolved", "private", "ip:10.244.2.1"),  # our pod CIDR, not known yet
        ("::ffff:10.244.2.1", "unresolved", "private", "ip:10.244.2.1"),
        ("10.200.0.7", "external", OTHER_CLUSTER_PEER, None),
        ("10.1.0.7", "unresolved", "private", None),  # private, outside the cluster CIDRs
        ("8.8.8.8", "external", "internet", None),
        ("10.96.0.10", "unresolved", "unknown", None),  # the Service is the answer
        ("192.168.5.1", "node", "same_zone", None),
    ],
)
def test_remote_classes_and_what_waits(
    state: MetadataState, remote: str, attribution: str, peer: str, waits: str | None
) -> None:
    r = _raw(remote_addr=remote, family=6 if ":" in remote else 4)
    out = enrich(r, state, CLASSIFIER)
    assert out.server.attribution == attribution
    assert out.peer_class == peer
    assert missing_key(r, out, CLASSIFIER) == waits


def test_clusterip_names_the_service(state: MetadataState) -> None:
    out = enrich(_raw(remote_addr="10.96.0.10"), state, CLASSIFIER)
    assert (out.server.service, out.server.namespace) == ("api", "ns")
    assert out.server.workload_key() == "ns/Service/api"


def test_unknown_local_pod_waits_for_its_uid(state: MetadataState) -> None:
    r = _raw(pod_uid="late-uid")
    out = enrich(r, state, CLASSIFIER)
    assert missing_key(r, out, CLASSIFIER) == "uid:late-uid"
    # Server-side record: the local end is the server.
    r = _raw(role="server", pod_uid="late-uid", remote_addr="8.8.8.8")
    assert missing_key(r, enrich(r, state, CLASSIFIER), CLASSIFIER) == "uid:late-uid"


def test_changes_are_tracked_for_retries(state: MetadataState) -> None:
    assert state.drain_changes() == set()  # not tracking before the initial load ends
    state.track_changes()
    state.upsert(
        PodMeta(
            uid="s9",
            name="s9",
            namespace="ns",
            node="node-a",
            ips=["10.244.2.1", "fd00:10::0:5"],
            start_time_ns=T0,
            workload_kind="StatefulSet",
            workload_name="db",
        ),
        T0,
    )
    state.upsert(NodeMeta(name="node-b", zone=None, region=None, addresses=["192.168.5.2"]), T0)
    assert state.drain_changes() == {
        "uid:s9",
        "ip:10.244.2.1",
        "ip:fd00:10::5",
        "ip:192.168.5.2",
    }
    assert state.drain_changes() == set()
    r = _raw(remote_addr="10.244.2.1")
    out = enrich(r, state, CLASSIFIER)
    assert out.server.statefulset == "db" and missing_key(r, out, CLASSIFIER) is None


def test_fast_ipv4_path_agrees_with_ipaddress() -> None:
    import ipaddress
    import random

    from enricher.join.classify import _V4_NOT_GLOBAL

    rng = random.Random(7)
    samples = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(20000)]
    for net in _V4_NOT_GLOBAL:  # both edges of every range, and just outside them
        first, last = int(net.network_address), int(net.broadcast_address)
        samples += [str(ipaddress.IPv4Address(x)) for x in (first, last) if 0 <= x < 2**32]
        samples += [str(ipaddress.IPv4Address(x)) for x in (first - 1, last + 1) if 0 <= x < 2**32]
    c = AddressClassifier()
    checked = 0
    for addr in samples:
        ip = ipaddress.IPv4Address(addr)
        # Python's own table differs across patch releases inside 192.0.0.0/24, and it
        # counts multicast as global; TCP peers are never multicast.
        if ip in ipaddress.IPv4Network("192.0.0.0/24") or ip.is_multicast:
            continue
        assert (c.classify(addr) == "internet") == ip.is_global, addr
        checked += 1
    assert checked > 15000


def test_short_ipv4_forms_are_not_taken_for_addresses() -> None:
    c = AddressClassifier()
    assert c.classify("127.1") == "invalid"
    assert c.classify("10.0.0.256") == "invalid"


def test_ranges_by_first_octet_keep_narrow_ranges_and_split_wide_ones() -> None:
    import ipaddress

    from enricher.join.classify import _by_first_octet

    table = _by_first_octet(
        [ipaddress.IPv4Network("172.16.0.0/12"), ipaddress.IPv4Network("240.0.0.0/6")]
    )
    assert table[172] == ((0xAC100000, 0xFFF00000),)
    # A /6 is four whole /8s, each standing alone; the octets around them have nothing.
    assert [octet for octet, pairs in enumerate(table) if pairs] == [172, 240, 241, 242, 243]
    assert table[243] == ((243 << 24, 0xFF000000),)
