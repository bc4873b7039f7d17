"""The faust worker against the real broker: known enriched records in, exact metrics out.

The worker runs as a subprocess (``python -m processors worker``) with 2 s windows and 1 s
grace. Records are dated in windows that start in the near future, so that none of them can be
late however slow the machine is, and the windows close a few seconds later by wall clock.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from confluent_kafka import Producer
from processors_harness import (
    Worker,
    final_counters,
    free_port,
    new_app_id,
    new_consumer,
    start_worker,
    wait_for_metric,
)

from flowscope.codec import JsonCodec
from flowscope.kafka import RecordConsumer, RecordProducer, TopicSpec, ensure_topics
from flowscope.metrics import probe
from flowscope.records import (
    CostPairMetric,
    CostRollupMetric,
    DeadLetter,
    Endpoint,
    EnrichedTcpConnection,
    Role,
    TcpLatencyMetric,
    TcpPairMetric,
)
from flowscope.topics import Topics
from processors.core.sketch import QuantileSketch

S = 1_000_000_000
WINDOW_S = 2
WINDOW = WINDOW_S * S
ALPHA = 0.01


@pytest.fixture
def worker(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Worker]:
    extra_args: list[str] = getattr(request, "param", [])
    # Two partitions: per-partition records, summed by consumers (and by this test).
    ensure_topics(kafka_bootstrap, [TopicSpec(topics.enriched_tcp, partitions=2)])
    w = start_worker(
        kafka_bootstrap,
        topics,
        tmp_path,
        new_app_id(),
        WINDOW_S,
        extra_args,
        metrics_port=free_port(),
    )
    try:
        yield w
    finally:
        w.stop()


def endpoint(workload: str | None, zone: str | None, address: str) -> Endpoint:
    if workload is None:
        return Endpoint(address=address, port=40000, attribution="external")
    return Endpoint(
        address=address,
        port=8080,
        attribution="pod",
        namespace="shop",
        workload_kind="Deployment",
        workload_name=workload,
        deployment=workload,
        zone=zone,
    )


def connection(
    end_ns: int,
    role: Role,
    client_observed: bool,
    client: Endpoint,
    server: Endpoint,
    c2s: int,
    s2c: int,
    latency_us: int | None,
    peer_class: str,
) -> EnrichedTcpConnection:
    return EnrichedTcpConnection(
        start_time_ns=end_ns - 5_000_000,
        end_time_ns=end_ns,
        observer_node="node-a" if role == "client" else "node-b",
        observer_role=role,
        client_observed=client_observed,
        network_type="ipv4",
        client=client,
        server=server,
        bytes_client_to_server=c2s,
        bytes_server_to_client=s2c,
        connect_latency_us=latency_us,
        srtt_us=120,
        retrans_segs=0,
        peer_class=peer_class,  # type: ignore[arg-type]
    )


@dataclass
class Truth:
    connections: int = 0
    c2s: int = 0
    s2c: int = 0

    def __post_init__(self) -> None:
        self.latencies: list[int] = []


def consume_all(
    consumer: RecordConsumer, want: int, timeout_s: float, worker: Worker
) -> list[bytes]:
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(values) < want:
        if worker.proc.poll() is not None:
            pytest.fail(f"worker exited with {worker.proc.returncode}:\n{worker.log()[-4000:]}")
        for msg in consumer.consume(100, 0.5):
            value = msg.value()
            assert value is not None
            values.append(value)
        # consume() hands on no error message: it counts them.
        assert consumer.counters.errors == 0, consumer.counters.last_error
    return values


def exact_quantile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def test_worker_publishes_exact_pair_metrics_once_per_window(
    worker: Worker, kafka_bootstrap: str, topics: Topics
) -> None:
    worker.wait_for_log(r"processor ready", timeout_s=90)
    rng = random.Random(2024)

    # Two windows that start at least 1 s from now: no record can be late on a slow machine.
    now = time.time_ns()
    w1 = (now + S) - (now + S) % WINDOW + WINDOW
    w2 = w1 + WINDOW
    web = endpoint("web", "zone-a", "10.1.0.5")
    db = endpoint("db", "zone-b", "10.2.0.7")
    outsider = endpoint(None, None, "203.0.113.9")
    web_key, db_key = "shop/Deployment/web", "shop/Deployment/db"
    outsider_key = "external/203.0.113.9"

    records: list[EnrichedTcpConnection] = []
    truth: dict[tuple[int, str, str], Truth] = {}
    # web -> db: both ends observed; each connection reported twice, counted once.
    # Event times include both boundaries of each window.
    ends = [w1, w1 + WINDOW - 1, w2, w2 + WINDOW - 1]
    ends += [rng.randrange(w1, w2 + WINDOW) for _ in range(296)]
    for end in ends:
        c2s, s2c = rng.randrange(0, 50_000), rng.randrange(0, 500_000)
        latency = rng.randrange(80, 20_000)
        t = truth.setdefault((end - end % WINDOW, web_key, db_key), Truth())
        t.connections += 1
        t.c2s += c2s
        t.s2c += s2c
        t.latencies.append(latency)
        records.append(connection(end, "client", True, web, db, c2s, s2c, latency, "cross_zone"))
        records.append(connection(end, "server", True, web, db, c2s, s2c, None, "cross_zone"))
    # outsider -> db: only the server end has a collector, so its records count.
    for end in [w1 + 1, w1 + 2, w2 + 3]:
        t = truth.setdefault((end - end % WINDOW, outsider_key, db_key), Truth())
        t.connections += 1
        t.c2s += 10
        t.s2c += 20
        records.append(connection(end, "server", False, outsider, db, 10, 20, None, "internet"))
    rng.shuffle(records)

    codec = JsonCodec(EnrichedTcpConnection)
    producer = RecordProducer(kafka_bootstrap)
    # One key: every record on one partition, so one record per pair and window. Half are
    # single records, half batches (JSON arrays): consumers must accept both.
    half = len(records) // 2
    for r in records[:half]:
        producer.produce(topics.enriched_tcp, codec.encode(r), key=b"pairs")
    for i in range(half, len(records), 50):
        producer.produce(topics.enriched_tcp, codec.encode_batch(records[i : i + 50]), key=b"pairs")
    producer.produce(topics.enriched_tcp, b'{"not": "an enriched record"', key=b"bad")
    assert producer.flush(15) == 0
    assert producer.counters.delivered == half + math.ceil((len(records) - half) / 50) + 1

    metrics_consumer = new_consumer(kafka_bootstrap, topics.metrics_tcp_pairs)
    metric_codec = JsonCodec(TcpPairMetric)
    try:
        raw = consume_all(metrics_consumer, want=len(truth), timeout_s=60, worker=worker)
        metrics = [metric_codec.decode(v) for v in raw]
        got = {(m.window_start_ns, m.client_workload, m.server_workload): m for m in metrics}
        assert len(metrics) == len(got) == len(truth), "one record per pair per window"
        assert set(got) == set(truth)
        for key, t in truth.items():
            m = got[key]
            assert m.window_end_ns == m.window_start_ns + WINDOW
            assert (m.connections, m.bytes_client_to_server, m.bytes_server_to_client) == (
                t.connections,
                t.c2s,
                t.s2c,
            ), key
            if key[1] == web_key:
                assert (m.client_zones, m.server_zones) == (["zone-a"], ["zone-b"])
                assert m.peer_classes == ["cross_zone"]
                assert m.client_namespace == m.server_namespace == "shop"
                for q, value in ((0.5, m.connect_latency_p50_us), (0.99, m.connect_latency_p99_us)):
                    want = exact_quantile(t.latencies, q)
                    assert value is not None
                    assert abs(value - want) <= ALPHA * want * (1 + 1e-9), (key, q, value, want)
                assert m.connect_latency_sketch is not None
                sketch = QuantileSketch.from_dict(m.connect_latency_sketch)
                assert sketch.count == t.connections
            else:
                assert (m.client_zones, m.server_zones) == ([], ["zone-b"])
                assert m.peer_classes == ["internet"]
                assert m.connect_latency_p50_us is None and m.connect_latency_sketch is None

        # A record for the first window after it was published: counted late, never
        # republished. Wait for two more close ticks to prove nothing else comes out.
        late = connection(w1 + 5, "client", True, web, db, 1, 1, 100, "cross_zone")
        producer.produce(topics.enriched_tcp, codec.encode(late), key=b"late")
        assert producer.flush(15) == 0
        worker.wait_for_log(r"late record dropped", timeout_s=30)
        extra = consume_all(metrics_consumer, want=1, timeout_s=4, worker=worker)
        assert extra == [], [metric_codec.decode(v) for v in extra]
    finally:
        metrics_consumer.close()

    # The same windows in the latency and cost families.
    latency_metrics = [
        JsonCodec(TcpLatencyMetric).decode(v)
        for v in consume_all(
            new_consumer(kafka_bootstrap, topics.metrics_tcp_latency), len(truth), 30, worker
        )
    ]
    assert {
        (m.window_start_ns, m.client_workload, m.server_workload) for m in latency_metrics
    } == set(truth)
    for lm in latency_metrics:
        t = truth[(lm.window_start_ns, lm.client_workload, lm.server_workload)]
        assert lm.connections == t.connections
        assert lm.outcomes == {"closed": lm.connections} and lm.failure_rate == 0.0
    cost = [
        JsonCodec(CostPairMetric).decode(v)
        for v in consume_all(
            new_consumer(kafka_bootstrap, topics.metrics_cost_pairs), len(truth), 30, worker
        )
    ]
    assert len(cost) == len(truth)
    for c in cost:
        t = truth[(c.window_start_ns, c.source_workload, c.destination_workload)]
        if c.cost_class == "cross_zone":  # aws: $0.01/GB sent + $0.01/GB received
            usd = Decimal(t.c2s + t.s2c) * Decimal("0.02") / 10**9
        else:  # internet: the server (inside) sends s2c at $0.09/GB; ingress is free
            usd = Decimal(t.s2c) * Decimal("0.09") / 10**9
        assert round(c.cost_usd, 2) == round(float(usd), 2)
        assert abs(Decimal(repr(c.cost_usd)) - usd) <= Decimal("1e-9"), c
    rollups = consume_all(new_consumer(kafka_bootstrap, topics.metrics_cost_rollups), 1, 5, worker)
    assert any(JsonCodec(CostRollupMetric).decode(v).scope == "namespace" for v in rollups)

    dead_consumer = new_consumer(kafka_bootstrap, topics.deadletter)
    try:
        dead = [JsonCodec(DeadLetter).decode(v) for v in consume_all(dead_consumer, 1, 30, worker)]
    finally:
        dead_consumer.close()
    assert len(dead) == 1
    assert dead[0].stage == "processors.tcp"
    assert dead[0].source_topic == topics.enriched_tcp
    assert dead[0].key == "bad"
    assert dead[0].payload == '{"not": "an enriched record"'
    assert "not valid JSON" in dead[0].reason

    # The same counters on /metrics while it runs, under their names, labelled by signal.
    n_web = sum(t.connections for k, t in truth.items() if k[1] == web_key)
    tcp = "{signal=tcp}"
    scraped = wait_for_metric(
        worker,
        "flowscope_processors_deadletter_records_total{outcome=delivered,signal=tcp}",
        1,
        timeout_s=30,
    )
    assert scraped[f"flowscope_processors_records_in_total{tcp}"] == len(records) + 1, scraped
    assert probe(worker.metrics_port, "readyz") == (200, "ok")
    assert probe(worker.metrics_port, "livez") == (200, "ok")
    assert scraped["flowscope_processors_records_total{outcome=counted,signal=tcp}"] == (
        len(records) - n_web
    )
    assert scraped["flowscope_processors_records_total{outcome=late_dropped,signal=tcp}"] == 1
    assert scraped["flowscope_processors_records_in_total{signal=dns}"] == 0, scraped
    assert scraped[f"flowscope_processors_pending_records{tcp}"] == 0, scraped

    started = time.monotonic()
    assert worker.stop() == 0
    assert time.monotonic() - started < 15, "SIGTERM must stop the worker promptly"
    counters = final_counters(worker)
    assert counters["records"] == str(len(records) + 1)
    assert counters["counted"] == str(len(records) - n_web)
    assert counters["duplicates_skipped"] == str(n_web)
    assert counters["late_dropped"] == "1"
    assert counters["dead_lettered"] == counters["dead_letters_delivered"] == "1"
    assert counters["metrics_published"] == counters["metrics_delivered"]
    assert int(counters["metrics_delivered"]) >= 3 * len(truth)
    assert counters["unpublished_records"] == "0"
    # Logs go to stderr; stdout stays clean for anything that wants to parse it.
    assert worker.stdout_path.read_text() == ""


@pytest.mark.parametrize("worker", [["--shutdown-timeout-seconds", "0.01"]], indirect=True)
def test_worker_stuck_in_shutdown_exits_at_its_deadline_with_counters(worker: Worker) -> None:
    """faust can sit in a stop for 60 s (consumer joining its group): the deadline bounds it.
    A 10 ms deadline is shorter than any clean stop, so the forced path must run."""
    worker.wait_for_log(r"processor ready", timeout_s=90)
    started = time.monotonic()
    assert worker.stop() == 1
    assert time.monotonic() - started < 10
    log = worker.log()
    assert "shutdown did not finish within" in log
    assert re.search(r"worker stopped \(exit 1\); final counters records=0 ", log), log[-2000:]


def test_worker_reads_committed_records_only(
    worker: Worker, kafka_bootstrap: str, topics: Topics
) -> None:
    """The enricher writes in transactions: what an aborted one left in the log (a killed
    enricher's last batch, which its successor produces again) must not be counted."""
    worker.wait_for_log(r"processor ready", timeout_s=90)
    now = time.time_ns()
    w1 = (now + S) - (now + S) % WINDOW + WINDOW
    web, db = endpoint("web", "zone-a", "10.1.0.5"), endpoint("db", "zone-b", "10.2.0.7")
    codec = JsonCodec(EnrichedTcpConnection)

    def batch(n: int, c2s: int) -> bytes:
        records = [
            connection(w1 + i, "client", True, web, db, c2s, 1, 100, "cross_zone") for i in range(n)
        ]
        return codec.encode_batch(records)

    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"test-{new_app_id()}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topics.enriched_tcp, batch(30, 7), key=b"pairs")
    producer.flush(15)  # in the log, then aborted
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topics.enriched_tcp, batch(20, 1000), key=b"pairs")
    producer.commit_transaction(30)

    metrics_consumer = new_consumer(kafka_bootstrap, topics.metrics_tcp_pairs)
    try:
        (value,) = consume_all(metrics_consumer, want=1, timeout_s=60, worker=worker)
        # Anything else for this window (a count of the aborted records) shows up too.
        assert consume_all(metrics_consumer, want=1, timeout_s=3, worker=worker) == []
    finally:
        metrics_consumer.close()
    metric = JsonCodec(TcpPairMetric).decode(value)
    assert metric.window_start_ns == w1
    assert (metric.connections, metric.bytes_client_to_server) == (20, 20 * 1000)
