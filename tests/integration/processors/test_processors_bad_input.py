"""Bad input on both topics the processors read (enriched.tcp, enriched.dns), through the
real broker and a real worker: malformed JSON, a field of the wrong type, an unknown schema
version (alone, and inside a batch next to a good record) and a message too big for its dead
letter. Each goes to the dead-letter topic with the reason and is counted on its own stage;
the good records around them are still counted in the published metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Producer
from processors_harness import (
    Worker,
    consume,
    final_counters,
    new_app_id,
    new_consumer,
    start_worker,
)

from flowscope.codec import JsonCodec
from flowscope.records import (
    DeadLetter,
    DnsMetric,
    Endpoint,
    EnrichedDnsQuery,
    EnrichedTcpConnection,
    TcpPairMetric,
)
from flowscope.topics import Topics
from processors.core.dedupe import FirstPerId

S = 1_000_000_000
WINDOW_S = 2
WINDOW = WINDOW_S * S
# Just under the broker's and librdkafka's 1,000,000-byte message limit: accepted on the way
# in, while its dead letter (payload escaped in JSON, plus the envelope) would not fit.
OVERSIZE = 990_000
LABELS = ["not valid JSON", "invalid field", "version", "oversize", "version in a batch"]

WEB = Endpoint(
    address="10.1.0.1",
    port=40000,
    attribution="pod",
    namespace="shop",
    workload_kind="Deployment",
    workload_name="web",
    zone="zone-a",
)
DB = Endpoint(
    address="10.1.0.2",
    port=5432,
    attribution="pod",
    namespace="shop",
    workload_kind="Deployment",
    workload_name="db",
    zone="zone-b",
)
COREDNS = Endpoint(
    address="10.1.0.53",
    port=53,
    attribution="pod",
    namespace="kube-system",
    workload_kind="Deployment",
    workload_name="coredns",
    zone="zone-b",
    service="kube-dns",
)


def _tcp(t: int, version: int = 1) -> EnrichedTcpConnection:
    return EnrichedTcpConnection(
        schema_version=version,
        start_time_ns=t - 1000,
        end_time_ns=t,
        observer_node="node-a",
        observer_role="client",
        client_observed=True,
        network_type="ipv4",
        client=WEB,
        server=DB,
        bytes_client_to_server=100,
        bytes_server_to_client=200,
        connect_latency_us=300,
        srtt_us=120,
        retrans_segs=0,
        peer_class="cross_zone",
    )


def _dns(t: int, version: int = 1) -> EnrichedDnsQuery:
    return EnrichedDnsQuery(
        schema_version=version,
        time_ns=t,
        response_time_ns=t + 500_000,
        observer_node="n1",
        observer_role="client",
        client_observed=True,
        transport="udp",
        network_type="ipv4",
        client=WEB,
        server=COREDNS,
        server_class="cluster_dns",
        peer_class="cross_zone",
        txid=7,
        query_name="db.shop.svc.cluster.local",
        query_type="A",
        outcome="answered",
        rcode="NOERROR",
        answer_count=1,
        latency_us=500,
    )


def _bad(good: bytes, node_field: bytes) -> list[bytes]:
    """The first four kinds of bad input, in LABELS order; the batch is built apart."""
    assert node_field in good and b'"schema_version":1' in good
    return [
        b"{this is not json",
        good.replace(node_field, node_field.split(b":")[0] + b":17", 1),
        good.replace(b'"schema_version":1', b'"schema_version":99', 1),
        b'["' + b'\\"' * (OVERSIZE // 2) + b'"]',
    ]


@pytest.fixture
def worker(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> Iterator[Worker]:
    w = start_worker(
        kafka_bootstrap, topics, tmp_path, new_app_id(), WINDOW_S, ["--dns-grace-seconds", "1"]
    )
    try:
        yield w
    finally:
        w.stop()


def _produce(bootstrap: str, topic: str, values: list[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in values:
        producer.produce(topic, value=value, key=key.encode())
    assert producer.flush(30) == 0


def test_bad_input_on_enriched_topics_goes_to_dead_letters_and_the_stream_goes_on(
    worker: Worker, kafka_bootstrap: str, topics: Topics
) -> None:
    worker.wait_for_log(r"processor ready", timeout_s=90)
    # Dated in a window that starts in the near future: nothing can be late.
    now = time.time_ns()
    w0 = (now + S) - (now + S) % WINDOW + WINDOW
    tcp_codec, dns_codec = JsonCodec(EnrichedTcpConnection), JsonCodec(EnrichedDnsQuery)
    for topic, codec, make, node_field in (
        (topics.enriched_tcp, tcp_codec, _tcp, b'"flowscope.observer.node":"node-a"'),
        (topics.enriched_dns, dns_codec, _dns, b'"flowscope.observer.node":"n1"'),
    ):
        good = codec.encode(make(w0 + 1))  # type: ignore[operator]
        batch = codec.encode_batch([make(w0 + 2, 99), make(w0 + 3)])  # type: ignore[operator]
        values = [*_bad(good, node_field), batch]
        # The good record after the bad ones: the stream must go on to it.
        _produce(kafka_bootstrap, topic, [*zip(LABELS, values, strict=True), ("good", good)])

    metrics_tcp = new_consumer(kafka_bootstrap, topics.metrics_tcp_pairs)
    metrics_dns = new_consumer(kafka_bootstrap, topics.metrics_dns)
    dead_consumer = new_consumer(kafka_bootstrap, topics.deadletter)
    pairs: list[TcpPairMetric] = []
    dns: list[DnsMetric] = []
    letters: list[bytes] = []
    dedupe = FirstPerId()
    try:
        deadline = time.monotonic() + (w0 + WINDOW - time.time_ns()) / S + 45
        while time.monotonic() < deadline and not (pairs and dns and len(letters) >= 10):
            pairs += dedupe.keep(
                JsonCodec(TcpPairMetric).decode(v)  # type: ignore[misc]
                for v in consume(metrics_tcp, 0.5, [worker])
            )
            dns += dedupe.keep(
                JsonCodec(DnsMetric).decode(v) for v in consume(metrics_dns, 0.5, [worker])
            )
            letters += consume(dead_consumer, 0.5, [worker])
        # A little longer: a bad message must not turn into two letters or two metrics.
        letters += consume(dead_consumer, 2, [worker])
        pairs += dedupe.keep(
            JsonCodec(TcpPairMetric).decode(v)  # type: ignore[misc]
            for v in consume(metrics_tcp, 1, [worker])
        )
    finally:
        for c in (metrics_tcp, metrics_dns, dead_consumer):
            c.close()

    # The good record alone and the good half of the batch: counted, once.
    assert [(m.window_start_ns, m.connections) for m in pairs] == [(w0, 2)], pairs
    assert pairs[0].bytes_client_to_server == 200 and pairs[0].connect_latency_p50_us
    assert [(m.window_start_ns, m.queries, m.answered) for m in dns] == [(w0, 2, 2)], dns

    dead = [JsonCodec(DeadLetter).decode(v) for v in letters]
    assert len(dead) == 10, [(d.source_topic, d.key, d.reason[:80]) for d in dead]
    for topic, stage, record_type in (
        (topics.enriched_tcp, "processors.tcp", "EnrichedTcpConnection"),
        (topics.enriched_dns, "processors.dns.aggregate", "EnrichedDnsQuery"),
    ):
        mine = sorted((d for d in dead if d.source_topic == topic), key=lambda d: d.offset)
        assert [d.key for d in mine] == LABELS, [(d.key, d.reason[:80]) for d in mine]
        assert {d.stage for d in mine} == {stage}
        reasons = {d.key: d.reason for d in mine}
        assert "not valid JSON" in reasons["not valid JSON"], reasons
        assert mine[0].payload == "{this is not json"
        assert "got `int` - at `$.flowscope.observer.node`" in reasons["invalid field"], reasons
        for key in ("version", "version in a batch"):
            assert f"{record_type}: unsupported schema version schema_version=99" in reasons[key]
        assert "payload cut" in reasons["oversize"] and len(mine[3].payload) < OVERSIZE
        # The batch's letter holds only its bad record, not the good one next to it.
        batched = msgspec.json.decode(mine[4].payload)
        assert isinstance(batched, dict) and batched["schema_version"] == 99
    assert all(len(v) < 1_000_000 for v in letters)

    assert worker.stop() == 0
    tcp_counters = final_counters(worker)
    dns_counters = final_counters(worker, "dns counters at exit")
    for counters in (tcp_counters, dns_counters):
        assert counters["dead_lettered"] == counters["dead_letters_delivered"] == "5", counters
        assert counters["rejected"] == "2", counters  # the two version-99 records
        assert counters["counted"] == "2", counters
        assert counters["messages"] == "6", counters
