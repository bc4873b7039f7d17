"""DNS over IPv6 on a dual-stack node (pods routed as Calico routes them): a pod whose
resolv.conf names the DNS pod's IPv6 address resolves through glibc (A and AAAA over UDP)
and a stub over TCP; the real bpf/dns.bpf.o and the collector's pipeline report every query,
both ends, with their IPv6 addresses."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from test_dns_kernel import ListSink

from collector.dns.pipeline import DnsPipeline
from collector.dns.privacy import NamePrivacy
from collector.dns.settings import DEFAULT_DNS_BPF_OBJECT
from collector.dns.source import DnsSource
from collector.node.attribution import CgroupResolver
from collector.settings import default_cgroup_root
from flowscope.records import RawDnsQuery
from simnode import Cluster, Pod
from simnode.dns import DnsServerProcess, PodResolvConf, render

RULES = {
    "names": {
        "v6.test": {"addrs": ["192.0.2.6", "2001:db8::6"]},
        "gone.test": {"rcode": "NXDOMAIN"},
    }
}
Setup = tuple[Cluster, DnsSource, DnsPipeline, ListSink]


@pytest.fixture
def dual_stack(bpf_built: None) -> Iterator[Setup]:
    root = default_cgroup_root()
    resolver = CgroupResolver(root, min_walk_interval_s=0.0)
    with (
        DnsSource(DEFAULT_DNS_BPF_OBJECT, root, ringbuf_bytes=1 << 22) as source,
        Cluster(dual_stack=True, pod_wiring="routed") as cluster,
    ):
        sink = ListSink()
        pipeline = DnsPipeline(
            source, sink, resolver, "node-test", "t", NamePrivacy(), timeout_s=1.0
        )
        yield cluster, source, pipeline, sink


def test_queries_over_ipv6_udp_and_tcp(dual_stack: Setup) -> None:
    cluster, source, pipeline, sink = dual_stack
    dns = cluster.add_pod("coredns", node="node-a1", namespace="kube-system")
    app = cluster.add_pod("app", node="node-b1")
    assert dns.ip6 is not None and app.ip6 is not None
    server = DnsServerProcess(dns, RULES, host="::")
    try:
        conf = PodResolvConf(
            app, render([dns.ip6], [], ndots=1, options=["timeout:1", "attempts:1"])
        )
        done = app.run(
            conf.command(
                Pod.python("simnode.dns", "resolve", "--family", "unspec", "v6.test", "gone.test")
            )
        )
        looked_up = {r["name"]: r for r in json.loads(done.stdout)}
        app.run(Pod.python("simnode.dns", "query", "--server", dns.ip6, "--tcp", "v6.test"))
        deadline = time.monotonic() + 10
        mine: list[RawDnsQuery] = []
        while time.monotonic() < deadline and len(mine) < 5:
            source.wait(0.1)
            pipeline.pump()
            mine = [r for r in sink.records if r.role == "client" and r.pod_uid == app.uid]
    finally:
        server.stop()
    assert sorted(looked_up["v6.test"]["addrs"]) == ["192.0.2.6", "2001:db8::6"]
    assert looked_up["gone.test"]["ok"] is False
    assert {(r.family, r.local_addr, r.remote_addr, r.remote_port) for r in mine} == {
        (6, app.ip6, dns.ip6, 53)
    }
    by = Counter((r.query_name, r.query_type, r.transport, r.rcode) for r in mine)
    assert by == {
        ("v6.test", "A", "udp", "NOERROR"): 1,
        ("v6.test", "AAAA", "udp", "NOERROR"): 1,
        ("gone.test", "A", "udp", "NXDOMAIN"): 1,
        ("gone.test", "AAAA", "udp", "NXDOMAIN"): 1,
        ("v6.test", "A", "tcp", "NOERROR"): 1,
    }, by
    aaaa = next(r for r in mine if r.query_type == "AAAA" and r.query_name == "v6.test")
    assert aaaa.answer_addrs == ["2001:db8::6"] and aaaa.outcome == "answered"
    servers = [r for r in sink.records if r.role == "server" and r.pod_uid == dns.uid]
    assert len(servers) == 5
    assert {(r.family, r.local_addr, r.remote_addr) for r in servers} == {(6, dns.ip6, app.ip6)}
