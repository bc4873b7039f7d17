"""Churn on real sockets: short-lived pods with reused IPs, every enriched record checked.

One server pod stays. Client pods are created and deleted for ~20 s on a small pool of IPs
(every IP held by 3+ pods in turn); while it lives, each client pod connects to the server
and the server connects back to it (so the short-lived pod is both the client and the server
of connections). The kernel's connections go through the real path: BPF -> collector ->
Kafka -> enricher join. The metadata goes the way `enricher publish --file` takes it: after
every create and delete the test writes the cluster's objects (deleted pods as terminating
ones, with their deletionTimestamp) and publishes them with the enricher's own publisher.

The ground truth is what the test itself did: for every completed connection, its 4-tuple
(from the traffic tool's own summary: local ports), when it ran, and which pod was at each
end. Every enriched record of our addresses is checked against it, both ends, both
observers. Figures: correct / wrong / unresolved, plus lost and unexpected records.

IP reuse waits for the second after the deletion: Kubernetes times (startTime,
deletionTimestamp) are whole seconds, and the publisher ends a deleted pod's interval at the
end of its deletion second; a new pod started within that same second would be ambiguous to
any metadata-based join (real IPAMs do not reuse that fast).
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from demo.readout import TopicReader
from demo.services import PipelineSettings, running_pipeline
from enricher.publish.kubeobjects import parse_text
from enricher.publish.publisher import MetadataPublisher
from flowscope.codec import JsonCodec
from flowscope.records import Endpoint, EnrichedTcpConnection
from flowscope.topics import Topics
from simnode import Cluster, NodeSpec, Pod

S = 1_000_000_000
SERVER_PORT = 8080  # the long-lived server pod listens here
POD_PORT = 9090  # every short-lived pod listens here, for the server's connections back
CONNS_TO_SERVER = 3  # per short-lived pod
CONNS_TO_POD = 2  # per short-lived pod, from the server
SEND_BYTES = 700
REPLY_BYTES = 300
WORKERS = 3  # pods being churned at once
IPS_PER_WORKER = 2  # each worker alternates its own IPs, so an IP rests while the other works
CHURN_S = 20.0
# Reuse an IP only once the deletion's whole second is over (see the module docstring), plus a
# margin for the wall clock's own steps.
REUSE_MARGIN_NS = 50_000_000
MIN_USES = 3  # pods per IP, at least


@dataclass(frozen=True)
class Holder:
    uid: str
    name: str


@dataclass(frozen=True)
class Truth:
    client: Holder
    server: Holder
    start_ns: int  # the traffic tool's run, around the connection
    end_ns: int


FourTuple = tuple[str, int, str, int]  # client ip, client port, server ip, server port


class Churn:
    """The test's side: creates and deletes pods, publishes metadata, keeps the truth."""

    def __init__(
        self, cluster: Cluster, server: Pod, bootstrap: str, topics: Topics, objects_path: Path
    ) -> None:
        self.cluster = cluster
        self.server = server
        self.publisher = MetadataPublisher(bootstrap, topics)
        self.objects_path = objects_path
        self.lock = threading.Lock()  # one cluster mutation + publication at a time
        self.truth: dict[FourTuple, list[Truth]] = {}
        self.uses: Counter[str] = Counter()
        self.created = self.deleted = self.connections = 0
        self.publish_s: list[float] = []

    def publish(self) -> None:
        """Publish the cluster as `enricher publish --file` would (no pruning: the deleted
        pods stay in the file as terminating pods, which is what carries their end time)."""
        t0 = time.monotonic()
        self.cluster.write_objects(self.objects_path, include_deleted=True)
        parsed = parse_text(self.objects_path.read_text())
        assert not parsed.skipped, parsed.skipped
        self.publisher.publish(parsed, prune=False)
        self.publish_s.append(time.monotonic() - t0)

    def pod_life(self, ip: str) -> float:
        """One short-lived pod on ``ip``: create, traffic both ways, delete. Returns the wall
        time (s) from which ``ip`` may be reused."""
        with self.lock:
            pod = self.cluster.add_pod("frontend", node="node-a1", namespace="shop", ip=ip)
            self.created += 1
            self.uses[ip] += 1
            self.publish()
        me = Holder(pod.uid, pod.name)
        srv = Holder(self.server.uid, self.server.name)
        listener = pod.start_server(POD_PORT, reply_bytes=REPLY_BYTES)
        pod.wait_listening(POD_PORT, proc=listener)
        t0 = time.time_ns()
        out = pod.run_client(
            self.server.ip,
            SERVER_PORT,
            count=CONNS_TO_SERVER,
            send_bytes=SEND_BYTES,
            expect_reply_bytes=REPLY_BYTES,
        )
        t1 = time.time_ns()
        back = self.server.run_client(
            pod.ip,
            POD_PORT,
            count=CONNS_TO_POD,
            send_bytes=SEND_BYTES,
            expect_reply_bytes=REPLY_BYTES,
        )
        t2 = time.time_ns()
        assert out.completed == CONNS_TO_SERVER and back.completed == CONNS_TO_POD, (out, back)
        summary = pod.stop_server(listener)
        assert summary.completed == CONNS_TO_POD, summary
        with self.lock:
            for port in out.local_ports:
                self.truth.setdefault((ip, port, self.server.ip, SERVER_PORT), []).append(
                    Truth(me, srv, t0, t1)
                )
            for port in back.local_ports:
                self.truth.setdefault((self.server.ip, port, ip, POD_PORT), []).append(
                    Truth(srv, me, t1, t2)
                )
            self.connections += len(out.local_ports) + len(back.local_ports)
            gone = self.cluster.delete_pod(pod.name)
            self.deleted += 1
            self.publish()
        assert gone.meta.deletion_time is not None
        deleted_s = datetime.strptime(gone.meta.deletion_time, "%Y-%m-%dT%H:%M:%S%z")
        return deleted_s.replace(tzinfo=UTC).timestamp() + 1 + REUSE_MARGIN_NS / S

    def worker(self, ips: list[str], until: float) -> None:
        free_at = dict.fromkeys(ips, 0.0)
        i = 0
        # Until the time is up and each IP had MIN_USES holders (a slow machine takes longer).
        while time.monotonic() < until or i < MIN_USES * len(ips):
            ip = ips[i % len(ips)]
            wait = free_at[ip] - time.time()
            if wait > 0:
                time.sleep(wait)
            free_at[ip] = self.pod_life(ip)
            i += 1

    def expected(self, t: FourTuple, start_ns: int) -> Truth | None:
        """The truth for a record: its 4-tuple, and its time when the 4-tuple recurred."""
        found = self.truth.get(t, [])
        if len(found) == 1:
            return found[0]
        near = [x for x in found if x.start_ns - S <= start_ns <= x.end_ns + S]
        return near[0] if len(near) == 1 else None


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    nodes = [NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]
    with Cluster(nodes) as c:
        yield c


def _verdict(end: Endpoint, want: Holder) -> str:
    if end.attribution == "unresolved":
        return "unresolved"
    if end.attribution == "pod" and (end.pod_uid, end.pod_name) == (want.uid, want.name):
        return "correct"
    return "wrong"


def test_churn_with_ip_reuse_on_real_sockets(
    root_required: None, kafka_bootstrap: str, topics: Topics, cluster: Cluster, tmp_path: Path
) -> None:
    server = cluster.add_pod("checkout", node="node-b1", namespace="shop")
    # The pool: addresses of the server's /24 (the run's random block) far from the ones the
    # cluster hands out by default; every one is held by pod after pod.
    block = ipaddress.IPv4Network(f"{server.ip}/24", strict=False)
    pool = [str(block.network_address + 200 + i) for i in range(WORKERS * IPS_PER_WORKER)]
    churn = Churn(cluster, server, kafka_bootstrap, topics, tmp_path / "objects.yaml")
    churn.publish()
    ours = {server.ip, *pool}

    settings = PipelineSettings(
        bootstrap=kafka_bootstrap, topics=topics, node_name="sim-host", log_dir=tmp_path / "logs"
    )
    reader = TopicReader(kafka_bootstrap, topics.enriched_tcp)
    codec = JsonCodec(EnrichedTcpConnection)
    try:
        with running_pipeline(settings) as services:
            proc = server.start_server(SERVER_PORT, reply_bytes=REPLY_BYTES)
            server.wait_listening(SERVER_PORT, proc=proc)
            t_churn = time.monotonic()
            until = t_churn + CHURN_S
            with ThreadPoolExecutor(WORKERS) as pool_exec:
                futures = [
                    pool_exec.submit(churn.worker, pool[w::WORKERS], until) for w in range(WORKERS)
                ]
                for f in futures:
                    f.result()  # a failed worker fails the test with its own error
            churn_s = time.monotonic() - t_churn
            server.stop_server(proc)
            want = 2 * churn.connections  # both ends observed: a client and a server record

            def mine(es: list[EnrichedTcpConnection]) -> list[EnrichedTcpConnection]:
                return [
                    e
                    for e in es
                    if {e.client.address, e.server.address} <= ours
                    and (e.server.port in (SERVER_PORT, POD_PORT))
                ]

            enriched = mine(
                reader.read_until(codec, lambda es: len(mine(es)) >= want, timeout_s=45)
            )
            # A little longer: a duplicate would show up here.
            enriched += mine([r for v in reader.read(2) for r in codec.decode_batch(v)])
            for svc in services.values():
                svc.check_alive()
            enricher_log = services["enricher"].tail(8)
            collector_services = services["collector"]
    finally:
        reader.close()
    # The collector's last stats line (written at its stop): a cgroup it could not resolve
    # makes a pod's connection look like the host's, so its misses explain "wrong" locals.
    stats = [line for line in collector_services.log_text().splitlines() if " stats " in line]
    misses = re.search(r"cgroup_misses=(\d+)", stats[-1] if stats else "")

    counts: Counter[str] = Counter()
    problems: list[tuple[str, str, object, object]] = []
    seen: Counter[tuple[FourTuple, str, int]] = Counter()
    for e in enriched:
        t = (e.client.address, e.client.port, e.server.address, e.server.port)
        truth = churn.expected(t, e.start_time_ns)
        if truth is None:
            counts["unexpected"] += 1
            problems.append(("unexpected", e.observer_role, t, e))
            continue
        seen[(t, e.observer_role, truth.start_ns)] += 1
        verdicts = {_verdict(e.client, truth.client), _verdict(e.server, truth.server)}
        verdict = (
            "wrong"
            if "wrong" in verdicts
            else ("unresolved" if "unresolved" in verdicts else "correct")
        )
        counts[verdict] += 1
        if verdict != "correct":
            problems.append((verdict, e.observer_role, (e.client, e.server), truth))
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    total = counts["correct"] + counts["wrong"] + counts["unresolved"]
    share = {k: counts[k] / max(1, total) for k in ("correct", "wrong", "unresolved")}
    summary = (
        f"churn e2e: {churn.created} pods created and {churn.deleted} deleted in {churn_s:.1f}s "
        f"on {len(pool)} IPs (uses per IP {sorted(churn.uses.values())}); "
        f"{churn.connections} connections -> {want} records expected, {len(enriched)} read: "
        f"correct {counts['correct']} ({share['correct']:.2%}), "
        f"wrong {counts['wrong']} ({share['wrong']:.2%}), "
        f"unresolved {counts['unresolved']} ({share['unresolved']:.2%}), "
        f"unexpected {counts['unexpected']}, duplicates {duplicates}; metadata publish "
        f"max {max(churn.publish_s):.2f}s; collector cgroup misses "
        f"{misses.group(1) if misses else '?'}"
    )
    print(summary)
    for problem in problems[:10]:
        print(problem)
    print(enricher_log)
    assert min(churn.uses.values()) >= MIN_USES, f"every IP must be reused by 3+ pods: {summary}"
    assert counts["wrong"] == 0, f"{summary}; first problems: {problems[:5]}"
    assert counts["unresolved"] == 0, f"{summary}; first problems: {problems[:5]}"
    assert counts["unexpected"] == 0 and duplicates == 0, f"{summary}; {problems[:5]}"
    assert counts["correct"] == want == len(enriched), f"records lost: {summary}"
