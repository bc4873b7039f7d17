"""The worker's DNS input against the real broker: known enriched DNS queries in, exact DNS
metrics and the shipped DNS failure-rate alert (firing, then resolved) out.

The worker runs as a subprocess with 2 s windows and 1 s grace (TCP and DNS). Records are
dated in windows that start in the near future, so none can be late on a slow machine.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from processors_harness import Worker, consume, new_app_id, new_consumer, start_worker

from flowscope.codec import JsonCodec
from flowscope.kafka import RecordProducer, TopicSpec, ensure_topics
from flowscope.records import AlertEvent, DnsMetric, Endpoint, EnrichedDnsQuery
from flowscope.topics import Topics
from processors.core.dedupe import FirstPerId
from processors.core.sketch import QuantileSketch

S = 1_000_000_000
WINDOW_S = 2
WINDOW = WINDOW_S * S
ALPHA = 0.01


def workload(name: str, ns: str, zone: str, service: str | None = None) -> Endpoint:
    return Endpoint(
        address="10.1.0.1",
        port=53 if service else 40000,
        attribution="pod",
        namespace=ns,
        workload_kind="Deployment",
        workload_name=name,
        service=service,
        zone=zone,
    )


WEB = workload("web", "shop", "zone-a")
API = workload("api", "shop", "zone-a")
COREDNS = workload("coredns", "kube-system", "zone-b", service="kube-dns")
OUTSIDE = Endpoint(address="198.51.100.7", port=5353, attribution="external")
WEB_KEY, API_KEY = "shop/Deployment/web", "shop/Deployment/api"
DNS_KEY, OUT_KEY = "kube-system/Deployment/coredns", "external/198.51.100.7"


@dataclass
class Truth:
    queries: int = 0
    failed: int = 0
    noise: int = 0
    expansions: int = 0
    timeouts: int = 0
    rcodes: dict[str, int] = field(default_factory=dict)
    latencies: list[int] = field(default_factory=list)


def query(
    t: int,
    client: Endpoint,
    role: str,
    observed: bool,
    outcome: str,
    rcode: str | None,
    expansion: bool,
    latency: int | None,
) -> EnrichedDnsQuery:
    return EnrichedDnsQuery(
        time_ns=t,
        response_time_ns=None if latency is None else t + latency * 1000,
        observer_node="n1" if role == "client" else "n2",
        observer_role=role,  # type: ignore[arg-type]
        client_observed=observed,
        transport="udp",
        network_type="ipv4",
        client=client,
        server=COREDNS,
        server_class="cluster_dns",
        peer_class="cross_zone",
        txid=7,
        query_name=("api.example.com.shop.svc.cluster.local" if expansion else "api.example.com"),
        query_type="A",
        outcome=outcome,
        rcode=rcode,  # type: ignore[arg-type]
        answer_count=None if rcode is None else 1,
        latency_us=latency,
        search_expansion=expansion,
        asked_name="api.example.com",
    )


# Per window: (client, queries answered NOERROR, SERVFAIL, timeouts, final-name NXDOMAIN,
# expansion NXDOMAIN (noise)). web breaches 5% in windows 0 and 1 and is clean in 2; api
# stays under 5%; the rule needs 2 windows in a row: fires at window 1, resolves at window 2.
PLAN = {
    0: [(WEB, 50, 6, 2, 2, 100), (API, 60, 1, 0, 0, 40)],
    1: [(WEB, 45, 3, 1, 1, 80), (API, 60, 0, 1, 0, 40)],
    2: [(WEB, 50, 0, 0, 0, 60), (API, 60, 0, 0, 0, 40)],
}


def build(
    w0: int, rng: random.Random
) -> tuple[list[EnrichedDnsQuery], dict[tuple[int, str], Truth]]:
    records: list[EnrichedDnsQuery] = []
    truth: dict[tuple[int, str], Truth] = {}
    for index, rows in PLAN.items():
        start = w0 + index * WINDOW
        for client, ok, servfail, timeouts, nx, noise in rows:
            t = truth.setdefault((start, client.workload_key()), Truth())
            kinds = (
                ["NOERROR"] * ok
                + ["SERVFAIL"] * servfail
                + ["timeout"] * timeouts
                + ["NXDOMAIN"] * nx
                + ["noise"] * noise
            )
            for kind in kinds:
                when = start + rng.randrange(0, WINDOW)
                answered = kind != "timeout"
                latency = rng.randrange(200, 40_000) if answered else None
                rcode = None if kind == "timeout" else ("NXDOMAIN" if kind == "noise" else kind)
                rec = query(
                    when,
                    client,
                    "client",
                    True,
                    "answered" if answered else "timeout",
                    rcode,
                    kind == "noise",
                    latency,
                )
                records.append(rec)
                # The DNS server pod's collector reports the same query: never counted.
                records.append(
                    query(
                        when,
                        client,
                        "server",
                        True,
                        rec.outcome,
                        rcode,
                        kind == "noise",
                        None if latency is None else 50,
                    )
                )
                t.queries += 1
                t.failed += kind in ("SERVFAIL", "timeout", "NXDOMAIN")
                t.noise += kind == "noise"
                t.expansions += kind == "noise"
                t.timeouts += kind == "timeout"
                if rcode is not None:
                    t.rcodes[rcode] = t.rcodes.get(rcode, 0) + 1
                if latency is not None:
                    t.latencies.append(latency)
        # A client outside the cluster: only the server end reports it, and that counts.
        t = truth.setdefault((start, OUT_KEY), Truth())
        for _ in range(3):
            records.append(
                query(start + 1, OUTSIDE, "server", False, "answered", "NOERROR", False, 50)
            )
            t.queries += 1
            t.rcodes["NOERROR"] = t.rcodes.get("NOERROR", 0) + 1
            t.latencies.append(50)
    rng.shuffle(records)
    return records, truth


@pytest.fixture
def worker(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> Iterator[Worker]:
    # Two partitions: the metrics are per partition; this test sums them as consumers do.
    ensure_topics(kafka_bootstrap, [TopicSpec(topics.enriched_dns, partitions=2)])
    w = start_worker(
        kafka_bootstrap, topics, tmp_path, new_app_id(), WINDOW_S, ["--dns-grace-seconds", "1"]
    )
    try:
        yield w
    finally:
        w.stop()


def test_worker_publishes_exact_dns_metrics_and_the_dns_alert(
    worker: Worker, kafka_bootstrap: str, topics: Topics
) -> None:
    worker.wait_for_log(r"processor ready.*enriched\.dns partitions \[0, 1\]", timeout_s=90)
    rng = random.Random(53)
    now = time.time_ns()
    w0 = (now + S) - (now + S) % WINDOW + WINDOW
    records, truth = build(w0, rng)

    codec = JsonCodec(EnrichedDnsQuery)
    producer = RecordProducer(kafka_bootstrap)
    # Several keys: records land on both partitions. Single records and batches both.
    for i, rec in enumerate(records[:30]):
        producer.produce(topics.enriched_dns, codec.encode(rec), key=f"k{i % 7}".encode())
    for i in range(30, len(records), 40):
        producer.produce(
            topics.enriched_dns, codec.encode_batch(records[i : i + 40]), key=f"k{i % 7}".encode()
        )
    assert producer.flush(15) == 0

    # Everything until the last window (and the alert that resolves on it) is out.
    deadline_s = (w0 + 3 * WINDOW - time.time_ns()) / S + 15
    metrics_consumer = new_consumer(kafka_bootstrap, topics.metrics_dns)
    alerts_consumer = new_consumer(kafka_bootstrap, topics.alerts)
    try:
        raw = consume(metrics_consumer, deadline_s, [worker])
        alerts_raw = consume(alerts_consumer, 3, [worker])
    finally:
        metrics_consumer.close()
        alerts_consumer.close()
    dedupe = FirstPerId()
    metrics = dedupe.keep(JsonCodec(DnsMetric).decode(v) for v in raw)
    assert dedupe.duplicates == 0  # no restart here: each id published once

    by_key: dict[tuple[int, str], list[DnsMetric]] = defaultdict(list)
    for m in metrics:
        assert (m.server, m.server_class, m.name_group) == (DNS_KEY, "cluster_dns", "example.com")
        assert m.window_end_ns == m.window_start_ns + WINDOW
        by_key[(m.window_start_ns, m.client_workload)].append(m)
    assert set(by_key) == set(truth)
    for key, t in truth.items():
        parts = by_key[key]
        assert len({m.source_partition for m in parts}) == len(parts)  # one per partition
        got = (
            sum(m.queries for m in parts),
            sum(m.failed for m in parts),
            sum(m.search_noise for m in parts),
            sum(m.search_expansions for m in parts),
            sum(m.timeouts for m in parts),
        )
        assert got == (t.queries, t.failed, t.noise, t.expansions, t.timeouts), key
        rcodes: dict[str, int] = defaultdict(int)
        sketch = QuantileSketch(ALPHA)
        for m in parts:
            for rcode, n in m.rcodes.items():
                rcodes[rcode] += n
            if m.latency_sketch is not None:
                sketch.merge(QuantileSketch.from_dict(m.latency_sketch))
        assert dict(rcodes) == t.rcodes, key
        assert sketch.count == len(t.latencies)
        ordered = sorted(t.latencies)
        for q in (0.5, 0.9, 0.99):
            want = ordered[math.floor(q * (len(ordered) - 1))]
            value = sketch.quantile(q)
            assert value is not None and abs(value - want) <= ALPHA * want * (1 + 1e-9), (key, q)

    alerts = [JsonCodec(AlertEvent).decode(v) for v in alerts_raw]
    assert [(a.status, a.rule, a.window_start_ns) for a in alerts] == [
        ("firing", "dns-failure-rate", w0 + WINDOW),
        ("resolved", "dns-failure-rate", w0 + 2 * WINDOW),
    ], alerts
    firing, resolved = alerts
    assert firing.alert_id == resolved.alert_id
    assert firing.group == {"client_workload": WEB_KEY, "server": DNS_KEY}
    web = [truth[(w0 + i * WINDOW, WEB_KEY)] for i in range(2)]
    assert [e["value"] for e in firing.evidence] == [
        pytest.approx(t.failed / (t.queries - t.noise)) for t in web
    ]
    assert [e["queries"] for e in firing.evidence] == [t.queries - t.noise for t in web]

    code = worker.stop()
    assert code == 0, worker.log()[-3000:]
    found = re.search(r"dns counters at exit (.*)", worker.log())
    assert found is not None, worker.log()[-3000:]
    counters = dict(kv.split("=", 1) for kv in found.group(1).split())
    counted = sum(t.queries for t in truth.values())
    assert int(counters["counted"]) == counted
    assert int(counters["duplicates_skipped"]) == int(counters["records"]) - counted
    assert counters["late_dropped"] == "0" and counters["dead_lettered"] == "0"
    assert counters["pending_records"] == "0"
