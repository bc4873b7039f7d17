"""Exact DNS metrics when a worker is SIGKILLed mid-stream, restarted, and joined by a second one.

The TCP fault test (test_processors_faults.py) proves the guarantee for connections; this one
proves it for the worker's second input, ``enriched.dns``, which has its own agent, watermark
and pending acknowledgements (processors/app.py). The guarantee is the same: a message is
acknowledged only after every window its records went into is published, so a killed worker
loses nothing, and a window published again from re-read records carries the same
``metric_id``; a consumer keeping the first record per id (processors.core.dedupe) counts
every query exactly once. The test keeps its own ground truth per (window, client workload,
server, server class, name group), from the DNS metric rules, not from processors/dns/.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Producer
from processors_harness import (
    Worker,
    final_counters,
    group_offsets,
    logged_counters,
    new_app_id,
    new_consumer,
    pod,
    read_until,
    start_worker,
)

from flowscope.codec import JsonCodec
from flowscope.kafka import TopicSpec, ensure_topics
from flowscope.records import DnsMetric, DnsServerClass, Endpoint, EnrichedDnsQuery
from flowscope.topics import Topics
from processors.core.dedupe import FirstPerId
from processors.core.sketch import QuantileSketch

S = 1_000_000_000
WINDOW_S = 2
WINDOW = WINDOW_S * S
PARTITIONS = 4
QUERIES_PER_MESSAGE = 25
SEND_AFTER_KILL_S = 9
ALPHA = 0.01  # the worker's default --sketch-alpha

CLIENTS = [pod("web", "r1-a"), pod("api", "r1-b"), pod("batch", "r1-c")]
# Outside the cluster: only the DNS server's node sees it (client_observed False), and counts.
OUTSIDER = Endpoint(address="198.51.100.7", port=5353, attribution="external")
COREDNS = pod("coredns", "r1-b", namespace="kube-system", service="kube-dns")
NODE_CACHE = Endpoint(address="169.254.20.10", port=53, attribution="node", node="n1")
UPSTREAM = Endpoint(address="192.0.2.53", port=53, attribution="external")
SERVERS: list[tuple[Endpoint, DnsServerClass]] = [
    (COREDNS, "cluster_dns"),
    (NODE_CACHE, "node_local_cache"),
    (UPSTREAM, "upstream"),
]
# (asked name, its name group under the default grouping "suffix" with 2 labels, the
# search-path expansions a pod with ndots:5 sends first). Expansions group with the asked name.
NAMES = [
    (
        "api.example.com",
        "example.com",
        ["api.example.com.shop.svc.cluster.local", "api.example.com.svc.cluster.local"],
    ),
    ("payments.shop.svc.cluster.local", "payments.shop.svc.cluster.local", []),
    ("cdn.images.net", "images.net", ["cdn.images.net.shop.svc.cluster.local"]),
]
RCODES = ("NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED")
# Outcome kinds and weights: names asked for, and search-path expansions (mostly NXDOMAIN).
ASKED = (
    ["NOERROR", "NXDOMAIN", "SERVFAIL", "REFUSED", "timeout", "malformed"],
    [70, 6, 8, 4, 8, 4],
)
EXPANDED = (["NXDOMAIN", "NOERROR", "SERVFAIL", "timeout"], [85, 5, 5, 5])


@dataclass
class Tally:
    """One (window, client, server, server class, name group): the truth, or the published
    metrics of all source partitions summed."""

    queries: int = 0
    answered: int = 0
    timeouts: int = 0
    malformed: int = 0
    failed: int = 0
    search_expansions: int = 0
    search_noise: int = 0
    retransmissions: int = 0
    truncated: int = 0
    rcodes: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)

    def add_metric(self, m: DnsMetric) -> None:
        self.queries += m.queries
        self.answered += m.answered
        self.timeouts += m.timeouts
        self.malformed += m.malformed
        self.failed += m.failed
        self.search_expansions += m.search_expansions
        self.search_noise += m.search_noise
        self.retransmissions += m.retransmissions
        self.truncated += m.truncated
        self.rcodes.update(m.rcodes)
        self.failures.update(m.failures)


Key = tuple[int, str, str, str, str]  # window start, client, server, server class, name group


@dataclass
class Truth:
    tallies: dict[Key, Tally] = field(default_factory=lambda: defaultdict(Tally))
    latencies: dict[Key, list[int]] = field(default_factory=lambda: defaultdict(list))


def lookup(rng: random.Random, now_ns: int, truth: Truth) -> list[EnrichedDnsQuery]:
    """One query, as its collectors report it, with its effect on the truth."""
    client = OUTSIDER if rng.random() < 0.05 else rng.choice(CLIENTS)
    server_class: DnsServerClass
    server, server_class = (COREDNS, "cluster_dns") if client is OUTSIDER else rng.choice(SERVERS)
    asked, group, expansions = rng.choice(NAMES)
    expansion = bool(expansions) and rng.random() < 0.4
    kinds, weights = EXPANDED if expansion else ASKED
    [kind] = rng.choices(kinds, weights)
    when = now_ns - rng.randrange(0, 300_000_000)  # out of order, within grace (1 s)
    answered = kind in RCODES
    latency = int(rng.lognormvariate(7.5, 1.2)) + 1 if answered else None
    attempts = rng.choice((1, 1, 1, 2, 3)) if kind == "timeout" else rng.choice((1,) * 9 + (2,))
    truncated = answered and rng.random() < 0.03

    key = (when - when % WINDOW, client.workload_key(), server.workload_key(), server_class, group)
    t = truth.tallies[key]
    t.queries += 1
    t.answered += answered
    t.timeouts += kind == "timeout"
    t.malformed += kind == "malformed"
    t.search_expansions += expansion
    t.search_noise += expansion and kind == "NXDOMAIN"
    t.retransmissions += attempts - 1
    t.truncated += truncated
    if answered:
        t.rcodes[kind] += 1
    if latency is not None:
        truth.latencies[key].append(latency)
    # Failures: SERVFAIL, REFUSED, timeouts, malformed, NXDOMAIN of an asked name.
    if kind in ("SERVFAIL", "REFUSED", "timeout", "malformed") or (
        kind == "NXDOMAIN" and not expansion
    ):
        t.failed += 1
        t.failures[kind] += 1

    name, txid = (rng.choice(expansions) if expansion else asked), rng.randrange(65536)

    def report(role: str, observed: bool) -> EnrichedDnsQuery:  # both ends: the same query
        return EnrichedDnsQuery(
            time_ns=when,
            response_time_ns=None if latency is None else when + latency * 1000,
            observer_node="n-client" if role == "client" else "n-server",
            observer_role=role,
            client_observed=observed,  # type: ignore[arg-type]
            transport="udp",
            network_type="ipv4",
            client=client,
            server=server,
            server_class=server_class,
            peer_class="same_zone",
            txid=txid,
            query_name=name,
            query_type="A",
            outcome="answered" if answered else kind,  # type: ignore[arg-type]
            rcode=kind if answered else None,
            answer_count=1 if kind == "NOERROR" else None,
            response_truncated=truncated,
            latency_us=latency,
            attempts=attempts,
            search_expansion=expansion,
            asked_name=asked,
            malformed_reason="label too long" if kind == "malformed" else None,
        )

    if client is OUTSIDER:
        return [report("server", False)]
    records = [report("client", True)]
    if server is COREDNS:
        records.append(report("server", True))  # the DNS pod's node reports it too: skipped
    return records


def test_dns_sigkill_restart_and_a_second_worker_give_exact_metrics(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    ensure_topics(kafka_bootstrap, [TopicSpec(topics.enriched_dns, partitions=PARTITIONS)])
    app_id = new_app_id()
    # As in the TCP fault test: idle allowance 30 s (the restart's backlog is not late),
    # windows close on event-time progress; DNS grace 1 s (records are at most 0.3 s late).
    extra = ["--idle-allowance-seconds", "30", "--dns-grace-seconds", "1"]
    first = start_worker(kafka_bootstrap, topics, tmp_path, app_id, WINDOW_S, extra, "first")
    workers: list[Worker] = [first]
    try:
        first.wait_for_log(r"processor ready.*enriched\.dns partitions \[0, 1, 2, 3\]", 90)
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
        codec = JsonCodec(EnrichedDnsQuery)
        rng = random.Random(17)
        truth = Truth()
        started = time.monotonic()
        killed_at: float | None = None
        next_check = started + 5
        at_kill: dict[str, str] = {}
        offsets: list[tuple[int, int]] = []
        sent = 0
        while killed_at is None or time.monotonic() - killed_at < SEND_AFTER_KILL_S:
            if killed_at is None and time.monotonic() >= next_check:
                # Kill once the worker has published DNS windows (the broker confirmed them)
                # and acknowledged some records (committed), with records still pending.
                next_check = time.monotonic() + 0.5
                at_kill = logged_counters(first, "dns counters") or {}
                if (
                    int(at_kill.get("metrics_delivered", 0)) > 0
                    and int(at_kill.get("pending_records", 0)) > 0
                    and sum(
                        c
                        for c, _ in group_offsets(
                            kafka_bootstrap, app_id, topics.enriched_dns, PARTITIONS
                        )
                    )
                    > 0
                ):
                    first.kill()
                    killed_at = time.monotonic()
                    assert producer.flush(15) == 0
                    # Frozen until the next workers join: what the killed one acknowledged.
                    offsets = group_offsets(
                        kafka_bootstrap, app_id, topics.enriched_dns, PARTITIONS
                    )
                    workers = [
                        start_worker(kafka_bootstrap, topics, tmp_path, app_id, WINDOW_S, extra, n)
                        for n in ("restarted", "second")
                    ]
                elif time.monotonic() - started > 30:
                    pytest.fail(f"no DNS window published and committed in 30 s: {at_kill}")
            batch: list[EnrichedDnsQuery] = []
            now = time.time_ns()
            for _ in range(QUERIES_PER_MESSAGE):
                batch += lookup(rng, now, truth)
            rng.shuffle(batch)
            producer.produce(
                topics.enriched_dns, codec.encode_batch(batch), partition=rng.randrange(PARTITIONS)
            )
            sent += len(batch)
            producer.poll(0)
            time.sleep(0.05)
        assert producer.flush(15) == 0
        # Acknowledged some records, not all: the restart has something to re-read.
        assert sum(c for c, _ in offsets) > 0 and any(c < end for c, end in offsets), offsets

        # Close the last windows: one later query in every partition moves the watermark
        # (the slowest partition's newest event) past them. Their own window is not checked.
        time.sleep(WINDOW_S + 1.5)
        sentinel = pod("sentinel", "r1-a")
        for p in range(PARTITIONS):
            rec = EnrichedDnsQuery(
                time_ns=time.time_ns(),
                response_time_ns=None,
                observer_node="n-client",
                observer_role="client",
                client_observed=True,
                transport="udp",
                network_type="ipv4",
                client=sentinel,
                server=COREDNS,
                server_class="cluster_dns",
                peer_class="same_zone",
                txid=0,
                query_name="sentinel.test",
                query_type="A",
                outcome="timeout",
                rcode=None,
                answer_count=None,
                latency_us=None,
            )
            producer.produce(topics.enriched_dns, codec.encode(rec), partition=p)
        assert producer.flush(15) == 0

        want = sum(t.queries for t in truth.tallies.values())

        def all_counted(ms: list[DnsMetric]) -> bool:
            return sum(m.queries for m in ms if "sentinel" not in m.client_workload) >= want

        reader = new_consumer(kafka_bootstrap, topics.metrics_dns)
        dedupe = FirstPerId()
        try:
            metrics = read_until(
                reader, workers, JsonCodec(DnsMetric).decode, dedupe, all_counted, 60
            )
        finally:
            reader.close()
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0], [w.log()[-3000:] for w in workers]

    published: dict[Key, Tally] = defaultdict(Tally)
    sketches: dict[Key, QuantileSketch] = defaultdict(lambda: QuantileSketch(ALPHA))
    for m in metrics:
        if "sentinel" in m.client_workload:
            continue
        key: Key = (m.window_start_ns, m.client_workload, m.server, m.server_class, m.name_group)
        published[key].add_metric(m)
        if m.latency_sketch is not None:
            sketches[key].merge(QuantileSketch.from_dict(m.latency_sketch))
    missing, invented = truth.tallies.keys() - published.keys(), published.keys() - truth.tallies
    assert not missing and not invented, f"{len(missing)} groups lost, {len(invented)} invented"
    for key, t in truth.tallies.items():
        assert published[key] == t, ("lost or double counted", key)
    # Latency: every group's merged sketch holds exactly its answered queries, and its
    # percentiles are within the sketch's relative error of the exact ones.
    assert {k: s.count for k, s in sketches.items()} == {
        k: len(v) for k, v in truth.latencies.items()
    }
    for key, values in truth.latencies.items():
        assert_percentiles(sketches[key], values, key)
    # And merged as a consumer would across windows, partitions, clients and servers.
    for _, group, _ in NAMES:
        merged = QuantileSketch(ALPHA)
        for key, sketch in sketches.items():
            if key[4] == group:
                merged.merge(sketch)
        values = [v for key, vs in truth.latencies.items() if key[4] == group for v in vs]
        assert len(values) > 1000
        assert_percentiles(merged, values, group)

    # Two workers shared the partitions (both counted queries) and nothing was late; the
    # DNS server's own reports of its clients' queries were skipped, not counted.
    counters = [final_counters(w, "dns counters at exit") for w in workers]
    assert all(int(c["counted"]) > 0 for c in counters), counters
    assert all(c["late_dropped"] == "0" for c in counters), counters
    assert all(c["dead_lettered"] == "0" for c in counters), counters
    assert all(int(c["duplicates_skipped"]) > 0 for c in counters), counters
    # The kill came after published windows whose records were not all committed: some
    # windows were published again from re-read records, and dropping them by id mattered.
    assert dedupe.duplicates > 0
    print(
        f"\nDNS records sent {sent} ({want} queries); at the kill the first worker had "
        f"delivered {at_kill['metrics_delivered']} outputs with {at_kill['pending_records']} "
        f"records pending, committed/end offsets {offsets}; DNS metrics republished after "
        f"the kill and dropped by id: {dedupe.duplicates} of "
        f"{dedupe.duplicates + len(metrics)} read"
    )


def assert_percentiles(sketch: QuantileSketch, values: list[int], what: object) -> None:
    ordered = sorted(values)
    for q in (0.5, 0.9, 0.99):
        exact = ordered[math.floor(q * (len(ordered) - 1))]
        value = sketch.quantile(q)
        assert value is not None and abs(value - exact) <= ALPHA * exact * (1 + 1e-9), (what, q)
