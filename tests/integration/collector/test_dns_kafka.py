"""``python -m collector --dns-enabled true``: DNS queries of simulated pods reach the
``<prefix>.raw.dns`` topic of the real broker, with query names hashed as configured."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

from flowscope.codec import JsonCodec
from flowscope.kafka import RecordConsumer
from flowscope.records import RawDnsQuery
from flowscope.resources import SOURCE_ROOT as REPO_ROOT
from flowscope.topics import Topics
from simnode import Cluster, Pod
from simnode.dns import DnsServerProcess, PodResolvConf, kubernetes_search, render

KEY = "test-key"


def _wait_ready(proc: subprocess.Popen[str], timeout_s: float) -> list[str]:
    seen: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if "collector ready" in line:
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(timeout_s) or not any("collector ready" in x for x in seen):
        raise AssertionError("collector never became ready:\n" + "".join(seen))
    return seen


def _consume(bootstrap: str, topic: str, timeout_s: float) -> list[tuple[bytes, bytes]]:
    consumer = RecordConsumer(bootstrap, f"t-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    out: list[tuple[bytes, bytes]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            out += [(msg.key(), msg.value()) for msg in consumer.consume(1000, 0.5)]
    finally:
        consumer.close()
    return out


def _hash(name: str) -> str:
    return hashlib.blake2b(name.encode(), digest_size=16, key=KEY.encode()).hexdigest()


def test_collector_produces_raw_dns_with_hashed_names(
    kafka_bootstrap: str, topics: Topics, bpf_built: None
) -> None:
    node = f"node-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "FLOWSCOPE_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "FLOWSCOPE_TOPIC_PREFIX": topics.prefix,
        "FLOWSCOPE_NODE_NAME": node,
        "FLOWSCOPE_DNS_NAME_HASH_KEY": KEY,
    }
    with Cluster() as cluster:
        dns = cluster.add_pod("coredns", node="node-a1", namespace="kube-system")
        server = DnsServerProcess(
            dns, {"names": {"web.default.svc.cluster.local": {"addrs": ["10.96.3.3"]}}}
        )
        app = cluster.add_pod("frontend", node="node-b1")
        conf = PodResolvConf(app, render([dns.ip], kubernetes_search("default"), ndots=5))
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "collector",
                "--dns-enabled",
                "true",
                "--dns-query-names",
                "hash",
                "--dns-timeout-seconds",
                "1",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            log = _wait_ready(proc, timeout_s=30)
            out = app.run(conf.command(Pod.python("simnode.dns", "resolve", "web", "nope")))
            assert json.loads(out.stdout)[0]["addrs"] == ["10.96.3.3"]
            time.sleep(1.5)  # past the DNS timeout: nothing may still be pending
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
        received = server.stop()
    assert rc == 0, "".join(log)
    codec = JsonCodec(RawDnsQuery)
    records = [(k, codec.decode(v)) for k, v in _consume(kafka_bootstrap, topics.raw_dns, 8)]
    client = [(k, r) for k, r in records if r.pod_uid == app.uid]
    # "web": found by its first expansion; "nope": 3 expansions + itself, all NXDOMAIN.
    assert sum(received.values()) == 5 and len(client) == 5
    for key, r in client:
        assert key == app.uid.encode() and r.node == node and r.name_privacy == "hashed"
        assert r.outcome == "answered" and r.search_expansion is not None
    by_name = {r.query_name: r for _, r in client}
    web = by_name[_hash("web.default.svc.cluster.local")]
    assert web.rcode == "NOERROR" and web.asked_name == _hash("web") and web.search_expansion
    assert by_name[_hash("nope")].search_expansion is False
    assert sum(r.rcode == "NXDOMAIN" for _, r in client) == 4
    server_side = [r for _, r in records if r.pod_uid == dns.uid]
    assert len(server_side) == 5 and all(r.role == "server" for r in server_side)
