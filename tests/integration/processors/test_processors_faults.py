"""Exact totals when a worker is SIGKILLed mid-stream, restarted, and joined by a second one.

The guarantee under test (processors/app.py): records are acknowledged only after every window
they went into is published, so a killed worker loses nothing (its unpublished windows are
re-read on restart), and a window published again from re-read records carries the same
``metric_id``; a consumer keeping the first record per id (processors.core.dedupe) counts every
connection exactly once. Totals are compared per window and pair with the ground truth.

The kill comes once the worker has published windows (the broker confirmed them) and
committed some records while others are pending, as in the DNS fault test: windows are then
published again from re-read records, and the test asserts that dropping them by id mattered.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
from confluent_kafka import Producer
from processors_harness import (
    Worker,
    consume,
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
from flowscope.records import CostPairMetric, Endpoint, EnrichedTcpConnection, TcpLatencyMetric
from flowscope.topics import Topics
from processors.core.dedupe import FirstPerId

S = 1_000_000_000
WINDOW_S = 2
WINDOW = WINDOW_S * S
PARTITIONS = 4
BATCH = 40
SEND_AFTER_KILL_S = 10


PODS = [pod("web", "r1-a"), pod("api", "r1-b"), pod("db", "r1-a"), pod("cache", "r1-c")]


def record(
    rng: random.Random, end_ns: int, client: Endpoint, server: Endpoint
) -> list[EnrichedTcpConnection]:
    cls = "same_zone" if client.zone == server.zone else "cross_zone"
    c2s, s2c = rng.randrange(0, 10**7), rng.randrange(0, 10**8)
    common = dict(
        start_time_ns=end_ns - 10**6,
        end_time_ns=end_ns,
        network_type="ipv4",
        client=client,
        server=server,
        bytes_client_to_server=c2s,
        bytes_server_to_client=s2c,
        srtt_us=200,
        retrans_segs=0,
        peer_class=cls,
    )
    # Both ends report: only the client's counts.
    return [
        EnrichedTcpConnection(
            observer_node="a",
            observer_role="client",
            client_observed=True,
            connect_latency_us=rng.randrange(100, 9000),
            **common,
        ),  # type: ignore[arg-type]
        EnrichedTcpConnection(
            observer_node="b",
            observer_role="server",
            client_observed=True,
            connect_latency_us=None,
            **common,
        ),  # type: ignore[arg-type]
    ]


def test_sigkill_restart_and_a_second_worker_give_exact_totals(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    ensure_topics(kafka_bootstrap, [TopicSpec(topics.enriched_tcp, partitions=PARTITIONS)])
    app_id = new_app_id()
    # Idle allowance 30 s: a restart (session timeout 6 s + start-up) lags less than that,
    # so the re-read backlog is not late. Windows close on event-time progress instead.
    extra = ["--idle-allowance-seconds", "30"]
    # enriched.tcp is acknowledged once the path stage's windows are published too; their
    # grace waits for the collector's drop windows (40 s by default), longer than this test.
    extra += ["--path-grace-seconds", "1"]
    first = start_worker(kafka_bootstrap, topics, tmp_path, app_id, WINDOW_S, extra, "first")
    workers: list[Worker] = [first]
    try:
        first.wait_for_log(r"processor ready", timeout_s=90)
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
        codec = JsonCodec(EnrichedTcpConnection)
        rng = random.Random(11)
        truth: dict[tuple[int, str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
        started = time.monotonic()
        killed_at: float | None = None
        next_check = started + 5
        at_kill: dict[str, str] = {}
        offsets: list[tuple[int, int]] = []
        sent = 0
        while killed_at is None or time.monotonic() - killed_at < SEND_AFTER_KILL_S:
            if killed_at is None and time.monotonic() >= next_check:
                # Mid-stream: windows published and confirmed, some records acknowledged
                # (committed), others pending in open windows or awaiting their ack.
                next_check = time.monotonic() + 0.5
                at_kill = logged_counters(first, "tcp counters") or {}
                if (
                    int(at_kill.get("metrics_delivered", 0)) > 0
                    and int(at_kill.get("pending_records", 0)) > 0
                    and sum(
                        c
                        for c, _ in group_offsets(
                            kafka_bootstrap, app_id, topics.enriched_tcp, PARTITIONS
                        )
                    )
                    > 0
                ):
                    first.kill()
                    killed_at = time.monotonic()
                    assert producer.flush(15) == 0
                    # Frozen until the next workers join: what the killed one acknowledged.
                    offsets = group_offsets(
                        kafka_bootstrap, app_id, topics.enriched_tcp, PARTITIONS
                    )
                    workers = [
                        start_worker(kafka_bootstrap, topics, tmp_path, app_id, WINDOW_S, extra, n)
                        for n in ("restarted", "second")
                    ]
                elif time.monotonic() - started > 30:
                    pytest.fail(f"no TCP window published and committed in 30 s: {at_kill}")
            batch: list[EnrichedTcpConnection] = []
            now = time.time_ns()
            for _ in range(BATCH // 2):
                client, server = rng.sample(PODS, 2)
                end = now - rng.randrange(0, 300_000_000)  # out of order, within grace (1 s)
                batch += record(rng, end, client, server)
                t = truth[(end - end % WINDOW, client.workload_key(), server.workload_key())]
                t[0] += 1
                t[1] += batch[-1].bytes_client_to_server
                t[2] += batch[-1].bytes_server_to_client
            rng.shuffle(batch)
            producer.produce(
                topics.enriched_tcp, codec.encode_batch(batch), partition=rng.randrange(PARTITIONS)
            )
            sent += len(batch)
            producer.poll(0)
            time.sleep(0.05)
        assert producer.flush(15) == 0
        # Acknowledged some records, not all: the restart has something to re-read.
        assert sum(c for c, _ in offsets) > 0 and any(c < end for c, end in offsets), offsets
        # Close the last windows: one later record in every partition moves the watermark
        # (the slowest partition's newest event) past them. Their own window is not checked.
        time.sleep(WINDOW_S + 1.5)
        sentinel = pod("sentinel", "r1-a")
        for p in range(PARTITIONS):
            [rec, _] = record(rng, time.time_ns(), sentinel, PODS[0])
            producer.produce(topics.enriched_tcp, codec.encode(rec), partition=p)
        assert producer.flush(15) == 0

        reader = new_consumer(kafka_bootstrap, topics.metrics_tcp_latency)
        cost_reader = new_consumer(kafka_bootstrap, topics.metrics_cost_pairs)
        dedupe, cost_dedupe = FirstPerId(), FirstPerId()
        cost: list[CostPairMetric] = []
        want = sum(t[0] for t in truth.values())

        def all_counted(ms: list[TcpLatencyMetric]) -> bool:
            return sum(m.connections for m in ms if "sentinel" not in m.client_workload) >= want

        latency = read_until(
            reader, workers, JsonCodec(TcpLatencyMetric).decode, dedupe, all_counted, 90
        )
        cost += cost_dedupe.keep(
            JsonCodec(CostPairMetric).decode(v) for v in consume(cost_reader, 3, workers)
        )
        reader.close()
        cost_reader.close()
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0], [w.log()[-3000:] for w in workers]

    published: dict[tuple[int, str, str], int] = defaultdict(int)
    for m in latency:
        if "sentinel" not in m.client_workload:
            published[(m.window_start_ns, m.client_workload, m.server_workload)] += m.connections
    assert published == {k: t[0] for k, t in truth.items()}, "lost or double counted"

    dollars: dict[tuple[int, str, str], Decimal] = defaultdict(Decimal)
    bytes_: dict[tuple[int, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for c in cost:
        if "sentinel" in c.source_workload:
            continue
        key = (c.window_start_ns, c.source_workload, c.destination_workload)
        dollars[key] += Decimal(repr(c.cost_usd))
        bytes_[key][0] += c.bytes_source_to_destination
        bytes_[key][1] += c.bytes_destination_to_source
    assert bytes_ == {k: [t[1], t[2]] for k, t in truth.items()}
    zone = {p.workload_key(): p.zone for p in PODS}
    for key, t in truth.items():
        cross = zone[key[1]] != zone[key[2]]
        exact = Decimal(t[1] + t[2]) * Decimal("0.02") / 10**9 if cross else Decimal(0)
        assert round(dollars[key], 2) == round(exact, 2), key

    counters = [final_counters(w) for w in workers]
    # Two workers shared the partitions (both counted records) and nothing was late.
    assert all(int(c["counted"]) > 0 for c in counters), counters
    assert all(c["late_dropped"] == "0" for c in counters), counters
    # Windows the killed worker had published were published again from re-read records
    # (latency and cost alike), and dropping them by id is what kept the totals exact.
    assert dedupe.duplicates > 0 and cost_dedupe.duplicates > 0
    print(
        f"\nrecords sent {sent}, connections {want}; at the kill the first worker had "
        f"delivered {at_kill['metrics_delivered']} outputs with {at_kill['pending_records']} "
        f"records pending, committed/end offsets {offsets}; windows republished after the "
        f"kill and dropped by id: latency {dedupe.duplicates} of "
        f"{dedupe.duplicates + len(latency)}, cost {cost_dedupe.duplicates} of "
        f"{cost_dedupe.duplicates + len(cost)}"
    )
