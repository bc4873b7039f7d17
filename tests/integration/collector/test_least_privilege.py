"""The collector runs with exactly the capabilities k8s/collector.yaml gives it, and each of
them is needed.

The collector is started under ``setpriv`` with the manifest's capability set as its bounding
set (a root process then holds those capabilities and no others, as in a container that drops
ALL and adds them back). With that set the whole pipeline must give the same answers as with
full root: pod-to-Service connections named by their backend (conntrack of the node's
namespace, where kube-proxy translates) and DNS search-path expansions known (each pod's
resolv.conf read through ``/proc/<pid>/root``). Without any one of them, the collector either
refuses to start with an error naming the capability, or counts what it could not do.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from demo.readout import TopicReader
from demo.services import PipelineSettings, ServiceProcess, publish_metadata, running_pipeline
from flowscope.codec import JsonCodec
from flowscope.records import EnrichedDnsQuery, EnrichedTcpConnection
from flowscope.resources import SOURCE_ROOT as REPO_ROOT
from flowscope.topics import Topics
from simnode import Cluster, NodeSpec, Pod
from simnode.dns import DnsServerProcess, PodResolvConf, kubernetes_search, render

MANIFEST = REPO_ROOT / "k8s" / "collector.yaml"
# From linux/capability.h: the bits of /proc/<pid>/status's CapEff.
CAP_BITS = {
    "NET_ADMIN": 12,
    "SYS_PTRACE": 19,
    "SYS_ADMIN": 21,
    "SYS_RESOURCE": 24,
    "PERFMON": 38,
    "BPF": 39,
}
N = 4
PORT = 8080
RULES = {"default": {"rcode": "NXDOMAIN"}, "names": {}}


def manifest_capabilities() -> list[str]:
    """The collector container's added capabilities, after it drops ALL."""
    daemonset = next(
        d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d.get("kind") == "DaemonSet"
    )
    [container] = [
        c for c in daemonset["spec"]["template"]["spec"]["containers"] if c["name"] == "collector"
    ]
    security = container["securityContext"]
    assert security["capabilities"]["drop"] == ["ALL"], security
    assert not security.get("privileged", False), security
    return list(security["capabilities"]["add"])


def bounded(caps: list[str]) -> tuple[str, ...]:
    """A command prefix that leaves a root process exactly ``caps``."""
    keep = ",".join(["-all", *(f"+{c.lower()}" for c in caps)])
    return ("setpriv", "--inh-caps=-all", "--ambient-caps=-all", f"--bounding-set={keep}", "--")


def effective_caps(pid: int) -> set[str]:
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(re.search(r"^CapEff:\s*([0-9a-f]+)$", status, re.M).group(1), 16)  # type: ignore[union-attr]
    names = {bit: name for name, bit in CAP_BITS.items()}
    held = {names.get(bit, f"cap{bit}") for bit in range(64) if mask >> bit & 1}
    return held


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    nodes = [NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]
    with Cluster(nodes, pod_wiring="bridge", kube_proxy="nftables") as c:
        yield c


def test_collector_gives_full_answers_with_the_manifests_capabilities(
    bpf_built: None, kafka_bootstrap: str, topics: Topics, cluster: Cluster, tmp_path: Path
) -> None:
    caps = manifest_capabilities()
    assert "SYS_ADMIN" not in caps, caps
    server = cluster.add_pod("checkout", node="node-b1", namespace="shop")
    client = cluster.add_pod("frontend", node="node-a1", namespace="shop")
    dns = cluster.add_pod("coredns", node="node-a1", namespace="kube-system")
    svc = cluster.add_service(
        "checkout", namespace="shop", selector={"app": "checkout"}, port=80, target_port=PORT
    )
    resolver = DnsServerProcess(dns, RULES)
    conf = PodResolvConf(client, render([dns.ip], kubernetes_search("shop"), ndots=5))
    publish_metadata(kafka_bootstrap, topics, cluster.write_objects(tmp_path / "objects.yaml"))
    settings = PipelineSettings(
        bootstrap=kafka_bootstrap,
        topics=topics,
        node_name="sim-host",
        log_dir=tmp_path / "logs",
        window_s=3.0,
        grace_s=1.0,
        collector_args=("--service-cidrs", "10.96.0.0/16", "--dns-enabled", "true"),
        collector_wrapper=bounded(caps),
    )
    tcp_reader = TopicReader(kafka_bootstrap, topics.enriched_tcp)
    dns_reader = TopicReader(kafka_bootstrap, topics.enriched_dns)
    try:
        with running_pipeline(settings) as services:
            collector = services["collector"]
            held = effective_caps(collector.proc.pid)
            proc = server.start_server(PORT, reply_bytes=100)
            server.wait_listening(PORT, proc=proc)
            summary = client.run_client(
                svc.cluster_ip, 80, count=N, send_bytes=50, expect_reply_bytes=100
            )
            server.stop_server(proc)
            assert summary.completed == N, summary
            # "nope" is tried with the three search domains of ns shop, then as itself.
            client.run(conf.command(Pod.python("simnode.dns", "resolve", "nope")))
            ports = set(summary.local_ports)

            def mine(e: EnrichedTcpConnection) -> bool:
                return (
                    e.observer_role == "client"
                    and e.client.pod_uid == client.uid
                    and e.client.port in ports
                )

            tcp = [
                e
                for e in tcp_reader.read_until(
                    JsonCodec(EnrichedTcpConnection),
                    lambda es: sum(map(mine, es)) >= N,
                    timeout_s=60,
                )
                if mine(e)
            ]

            def asked(e: EnrichedDnsQuery) -> bool:
                return e.observer_role == "client" and e.client.pod_uid == client.uid

            queries = [
                e
                for e in dns_reader.read_until(
                    JsonCodec(EnrichedDnsQuery), lambda es: sum(map(asked, es)) >= 4, timeout_s=60
                )
                if asked(e)
            ]
            log = collector.log_text()
    finally:
        tcp_reader.close()
        dns_reader.close()
        resolver.stop()
    assert held == set(caps), f"the collector held {sorted(held)}, the manifest gives {caps}"
    assert "Traceback" not in log, log
    assert len(tcp) == N
    for e in tcp:
        assert (e.server.pod_uid, e.server.service, e.server.port) == (
            server.uid,
            "checkout",
            PORT,
        ), e
    assert sorted(e.search_expansion for e in queries) == [False, True, True, True], queries


@pytest.mark.parametrize("missing", ["BPF", "PERFMON", "NET_ADMIN"])
def test_collector_without_a_capability_refuses_to_start_naming_it(
    bpf_built: None, kafka_bootstrap: str, topics: Topics, missing: str
) -> None:
    caps = [c for c in manifest_capabilities() if c != missing]
    done = subprocess.run(
        [
            *bounded(caps),
            sys.executable,
            "-m",
            "collector",
            "--node-name",
            "least-privilege",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--topic-prefix",
            topics.prefix,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO_ROOT,
    )
    assert done.returncode != 0, done.stderr
    assert "Operation not permitted" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    # BPF and PERFMON refusals come at load time, NET_ADMIN's when a cgroup program attaches.
    named = "CAP_NET_ADMIN" if missing == "NET_ADMIN" else "CAP_BPF"
    assert named in done.stderr, done.stderr


def test_collector_without_sys_ptrace_counts_pods_whose_resolv_conf_it_cannot_read(
    bpf_built: None, kafka_bootstrap: str, topics: Topics, cluster: Cluster, tmp_path: Path
) -> None:
    caps = [c for c in manifest_capabilities() if c != "SYS_PTRACE"]
    client = cluster.add_pod("frontend", node="node-a1", namespace="shop")
    dns = cluster.add_pod("coredns", node="node-a1", namespace="kube-system")
    resolver = DnsServerProcess(dns, RULES)
    conf = PodResolvConf(client, render([dns.ip], kubernetes_search("shop"), ndots=5))
    tmp_path.mkdir(exist_ok=True)
    collector = ServiceProcess(
        "collector",
        [
            *bounded(caps),
            sys.executable,
            "-m",
            "collector",
            "--node-name",
            "least-privilege",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--topic-prefix",
            topics.prefix,
            "--dns-enabled",
            "true",
            "--stats-interval-seconds",
            "1",
        ],
        {},
        tmp_path,
    )
    try:
        collector.wait_for_log(r"collector ready", 60)
        client.run(conf.command(Pod.python("simnode.dns", "resolve", "nope")))
        deadline = time.monotonic() + 30
        unknown = 0
        while unknown == 0 and time.monotonic() < deadline:
            time.sleep(1)
            found = re.findall(r"dns_search_unknown_config=(\d+)", collector.log_text())
            unknown = int(found[-1]) if found else 0
    finally:
        resolver.stop()
        collector.proc.send_signal(signal.SIGTERM)
        collector.stop()
    assert unknown >= 4, collector.tail()
    stats = json.dumps(collector.tail())
    assert "Traceback" not in stats, stats
