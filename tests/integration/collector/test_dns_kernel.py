"""DNS capture on the simulated node: a real DNS server pod, client pods resolving through
glibc's getaddrinfo (pod resolv.conf with search domains and ndots:5) and through a raw
stub; the real bpf/dns.bpf.o on the cgroup v2 root; the collector's pipeline (no Kafka)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from collector.dns.pipeline import DnsPipeline
from collector.dns.privacy import NamePrivacy
from collector.dns.resolvconf import ResolvConfReader
from collector.dns.search import SearchTracker
from collector.dns.settings import DEFAULT_DNS_BPF_OBJECT
from collector.dns.source import DnsSource
from collector.node.attribution import CgroupResolver
from collector.node.nat import NatResolver, parse_cidrs
from collector.settings import default_cgroup_root
from flowscope.codec import JsonCodec
from flowscope.kafka import ProducerCounters
from flowscope.records import RawDnsQuery
from flowscope.resources import SOURCE_ROOT as REPO_ROOT
from simnode import Cluster, Pod
from simnode.dns import DnsServerProcess, PodResolvConf, kubernetes_search, render

COLLECTOR_TIMEOUT_S = 1.0
DELAY_MS = 300
RULES = {
    "names": {
        "web.default.svc.cluster.local": {"addrs": ["10.96.7.7"]},
        "api.example.com": {"addrs": ["192.0.2.10"]},
        "broken.test": {"rcode": "SERVFAIL"},
        "ok.test": {"addrs": ["192.0.2.1"]},
        "fail.test": {"rcode": "SERVFAIL"},
        "slow.test": {"addrs": ["192.0.2.2"], "delay_ms": DELAY_MS},
        "silent.test": {"drop": True},
        "garbage.test": {"malformed": True},
    }
}
CODEC = JsonCodec(RawDnsQuery)


class ListSink:
    def __init__(self) -> None:
        self.counters = ProducerCounters()
        self.records: list[RawDnsQuery] = []

    def produce(self, topic: str, value: bytes | None, key: bytes | str | None = None) -> bool:
        assert value is not None
        self.records.append(CODEC.decode(value))
        return True


@dataclass
class Node:
    cluster: Cluster
    source: DnsSource
    pipeline: DnsPipeline
    sink: ListSink
    dns: Pod
    server: DnsServerProcess
    nat: NatResolver

    def collect(
        self, match: Callable[[RawDnsQuery], bool], want: int, timeout_s: float = 10
    ) -> list[RawDnsQuery]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.source.wait(0.1)
            self.pipeline.pump()
            found = [r for r in self.sink.records if match(r)]
            if len(found) >= want:
                time.sleep(0.3)  # let an unexpected extra arrive too: "exactly" is tested
                self.pipeline.pump()
                return [r for r in self.sink.records if match(r)]
        return [r for r in self.sink.records if match(r)]


@pytest.fixture(scope="module")
def node(bpf_built: None) -> Iterator[Node]:
    root = default_cgroup_root()
    resolver = CgroupResolver(root, min_walk_interval_s=0.0)
    with (
        DnsSource(DEFAULT_DNS_BPF_OBJECT, root, ringbuf_bytes=1 << 22) as source,
        Cluster() as cluster,
    ):
        dns = cluster.add_pod("coredns", node="node-a1", namespace="kube-system")
        server = DnsServerProcess(dns, RULES)
        sink = ListSink()
        search = SearchTracker(
            ResolvConfReader(root, lambda c: resolver.resolve(c).path), hold_s=COLLECTOR_TIMEOUT_S
        )
        nat = NatResolver(parse_cidrs("10.96.0.0/16"))  # the cluster's Service CIDR
        pipeline = DnsPipeline(
            source,
            sink,
            resolver,
            "node-test",
            "t",
            NamePrivacy(),
            timeout_s=COLLECTOR_TIMEOUT_S,
            search=search,
            nat=nat,
        )
        yield Node(cluster, source, pipeline, sink, dns, server, nat)
        server.stop()
        nat.close()


def _of_pods(*pods: Pod) -> Callable[[RawDnsQuery], bool]:
    uids = {p.uid for p in pods}
    return lambda r: r.pod_uid in uids


def test_getaddrinfo_search_path_expansions_marked(node: Node) -> None:
    app = node.cluster.add_pod("shop", node="node-b1")
    conf = PodResolvConf(
        app,
        render(
            [node.dns.ip],
            kubernetes_search("default"),
            ndots=5,
            options=["timeout:1", "attempts:1"],
        ),
    )
    done = app.run(
        conf.command(Pod.python("simnode.dns", "resolve", "web", "api.example.com", "broken.test"))
    )
    results = {r["name"]: r for r in json.loads(done.stdout)}
    assert results["web"]["addrs"] == ["10.96.7.7"]
    assert results["api.example.com"]["addrs"] == ["192.0.2.10"]
    assert results["broken.test"]["ok"] is False

    client = [r for r in node.collect(_of_pods(app), want=9) if r.role == "client"]
    search = kubernetes_search("default")
    expected_names = (
        ["web." + search[0]]
        + [f"api.example.com.{s}" for s in search]
        + ["api.example.com"]
        + [f"broken.test.{s}" for s in search]
        + ["broken.test"]
    )
    assert [r.query_name for r in sorted(client, key=lambda r: r.time_ns)] == expected_names
    assert Counter(r.rcode for r in client) == {"NOERROR": 2, "NXDOMAIN": 6, "SERVFAIL": 1}
    for r in client:
        assert r.outcome == "answered" and r.pod_uid == app.uid and r.local_addr == app.ip
        assert r.remote_addr == node.dns.ip and r.remote_port == 53 and r.transport == "udp"
        base = (
            r.query_name.split(".default.svc")[0]
            .split(".svc.cluster")[0]
            .split(".cluster.local")[0]
            if r.query_name
            else None
        )
        assert r.asked_name == base
        assert r.search_expansion is (r.query_name != base), r
    # Expansions are the NXDOMAIN noise; the names asked for carry the real outcome.
    asked = {r.asked_name: r.rcode for r in client if not r.search_expansion}
    assert asked == {"api.example.com": "NOERROR", "broken.test": "SERVFAIL"}

    # The server pod's own records: the same queries, attributed to the DNS pod.
    server = node.collect(lambda r: r.role == "server" and r.remote_addr == app.ip, want=9)
    assert len(server) == 9 and {r.pod_uid for r in server} == {node.dns.uid}
    assert sorted(r.query_name or "" for r in server) == sorted(expected_names)
    assert all(r.search_expansion is None for r in server)


def test_absolute_name_is_a_failure_not_search_noise(node: Node) -> None:
    """getaddrinfo("gone") sends gone.<search[i]> then "gone"; getaddrinfo of the absolute
    "gone.default.svc.cluster.local." sends one query, the same on the wire as gone's first
    expansion. Its NXDOMAIN is what the application got: not marked as an expansion."""
    app = node.cluster.add_pod("absolute", node="node-b1")
    conf = PodResolvConf(
        app,
        render(
            [node.dns.ip],
            kubernetes_search("default"),
            ndots=5,
            options=["timeout:1", "attempts:1"],
        ),
    )
    fqdn = "gone.default.svc.cluster.local"
    done = app.run(conf.command(Pod.python("simnode.dns", "resolve", "gone", fqdn + ".")))
    assert [r["ok"] for r in json.loads(done.stdout)] == [False, False]

    client = [r for r in node.collect(_of_pods(app), want=5) if r.role == "client"]
    search = kubernetes_search("default")
    got = [
        (r.query_name, r.rcode, r.search_expansion, r.asked_name)
        for r in sorted(client, key=lambda r: r.time_ns)
    ]
    assert got == [(f"gone.{s}", "NXDOMAIN", True, "gone") for s in search] + [
        ("gone", "NXDOMAIN", False, "gone"),
        (fqdn, "NXDOMAIN", False, None),
    ]
    assert node.pipeline.counters()["dns_search_not_continued"] >= 1


def test_stub_queries_rcodes_delay_timeout_malformed(node: Node) -> None:
    app = node.cluster.add_pod("batch", node="node-a2")
    names = ["ok.test", "nx.test", "fail.test", "slow.test", "silent.test", "garbage.test"]
    started = time.monotonic()
    done = app.run(
        Pod.python("simnode.dns", "query", "--server", node.dns.ip, "--timeout-s", "0.5", *names)
    )
    tcp = app.run(Pod.python("simnode.dns", "query", "--tcp", "--server", node.dns.ip, "ok.test"))
    stub = {r["name"]: r for r in json.loads(done.stdout)}
    assert stub["silent.test"].get("timeout") and stub["slow.test"]["rcode"] == 0

    records = node.collect(
        lambda r: r.pod_uid == app.uid or (r.role == "server" and r.remote_addr == app.ip),
        want=14,
        timeout_s=15,
    )
    client = {(r.query_name, r.transport): r for r in records if r.role == "client"}
    server = [r for r in records if r.role == "server"]
    assert len(client) == 7 and len(server) == 7 and len(records) == 14
    assert Counter((r.outcome, r.rcode) for r in client.values()) == {
        ("answered", "NOERROR"): 3,
        ("answered", "NXDOMAIN"): 1,
        ("answered", "SERVFAIL"): 1,
        ("timeout", None): 1,
        ("malformed", None): 1,
    }
    txids = {(s["name"], "udp"): s["txid"] for s in json.loads(done.stdout)}
    txids |= {(s["name"], "tcp"): s["txid"] for s in json.loads(tcp.stdout)}
    ports = {(s["name"], "udp"): s["port"] for s in json.loads(done.stdout)}
    ports |= {(s["name"], "tcp"): s["port"] for s in json.loads(tcp.stdout)}
    for key, r in client.items():
        assert (r.txid, r.local_port, r.local_addr) == (txids[key], ports[key], app.ip)
        assert r.pod_uid == app.uid and r.container_id == app.container_id
        assert r.remote_addr == node.dns.ip
    slow = client[("slow.test", "udp")]
    assert slow.latency_us is not None and slow.latency_us >= DELAY_MS * 1000
    assert slow.latency_us < DELAY_MS * 1000 + 200_000
    silent = client[("silent.test", "udp")]
    assert silent.outcome == "timeout" and silent.latency_us is None
    garbage = client[("garbage.test", "udp")]
    assert garbage.malformed_reason == "bad_pointer" and garbage.latency_us is not None
    assert client[("ok.test", "tcp")].answer_addrs == ["192.0.2.1"]
    # No resolv.conf of its own: never an expansion (unknown once the process has exited).
    assert all(r.search_expansion is not True for r in client.values())
    assert {r.pod_uid for r in server} == {node.dns.uid}
    assert Counter(r.outcome for r in server) == {"answered": 5, "timeout": 1, "malformed": 1}
    # The timeout is decided by the collector's wait, not the client's.
    assert silent.time_ns / 1e9 < time.time() - COLLECTOR_TIMEOUT_S
    assert time.monotonic() - started >= COLLECTOR_TIMEOUT_S
    counters = node.pipeline.counters()
    assert counters["dns_kernel_lost_ringbuf"] == 0 and counters["dns_decode_errors"] == 0


def test_cluster_dns_service_through_kube_proxy(node: Node) -> None:
    """resolv.conf names the DNS Service's ClusterIP; kube-proxy's rules in the node's
    namespace send it to the DNS pod, and the node's conntrack names that pod."""
    app = node.cluster.add_pod("natty", node="node-b1")
    svc = node.cluster.add_service(
        "kube-dns",
        namespace="kube-system",
        selector={"app": "coredns"},
        port=53,
        protocols=("UDP", "TCP"),
    )
    conf = PodResolvConf(
        app,
        render(
            [svc.cluster_ip],
            kubernetes_search("default"),
            ndots=5,
            options=["timeout:1", "attempts:1"],
        ),
    )
    app.run(conf.command(Pod.python("simnode.dns", "resolve", "web")))
    (record,) = [r for r in node.collect(_of_pods(app), want=1) if r.role == "client"]
    assert record.remote_addr == node.dns.ip and record.original_remote_addr == svc.cluster_ip
    assert record.outcome == "answered" and record.asked_name == "web"
    assert node.nat.stats.translated >= 1 and node.nat.stats.translated_in_socket_netns == 0


CHILD = r"""
import sys
from pathlib import Path
from collector.dns.source import DnsSource
from collector.node.nat import NatResolver, parse_cidrs
src = DnsSource(Path(sys.argv[1]), Path(sys.argv[2]))
print(" ".join(map(str, src.program_ids())), flush=True)
sys.stdin.read()
"""


def _attached(root: Path) -> set[int]:
    shown = subprocess.run(
        ["bpftool", "-j", "cgroup", "show", str(root)], capture_output=True, text=True, check=True
    )
    return {int(p["id"]) for p in json.loads(shown.stdout or "[]")}


def test_links_vanish_when_the_owner_dies(bpf_built: None) -> None:
    """BPF links, nothing pinned: a SIGKILLed collector leaves no program on the cgroup."""
    root = default_cgroup_root()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(DEFAULT_DNS_BPF_OBJECT), str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert child.stdout is not None
        ids = {int(x) for x in child.stdout.readline().split()}
        assert len(ids) == 2 and ids <= _attached(root)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    deadline = time.monotonic() + 5
    while ids & _attached(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not ids & _attached(root)
