"""The broker goes away during traffic and comes back: ``python -m collector`` keeps running,
buffers, resumes by itself, and every connection made meanwhile arrives exactly once or is
counted as dropped. Its counters are readable on the Prometheus endpoint and as health
records on Kafka.

The shared broker on 9092 is used by others: this test starts its own second broker
(devbroker.Broker in a temporary state dir on free ports) and stops/starts only that one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.metrics import VOCABULARY
from devbroker import Broker
from flowscope.codec import JsonCodec
from flowscope.kafka import RecordConsumer, TopicSpec, ensure_topics
from flowscope.metrics import probe, samples, scrape
from flowscope.records import CollectorHealth, RawTcpConnection
from flowscope.resources import SOURCE_ROOT as REPO_ROOT
from flowscope.topics import Topics

PER_PHASE = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def own_broker(root_required: None, tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(
        state_dir=tmp_path / "kafka", port=_free_port(), controller_port=_free_port(), heap_mb=384
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _connections(port: int, count: int) -> list[int]:
    """``count`` loopback connections to our listener; returns the client ports."""
    ports = []
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as c:
            ports.append(c.getsockname()[1])
            c.sendall(b"p" * 100)
            c.shutdown(socket.SHUT_WR)
            while c.recv(65536):
                pass
    return ports


def _serve(listener: socket.socket, stop: threading.Event) -> None:
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            while conn.recv(65536):
                pass
            conn.sendall(b"q" * 50)


def _metrics(port: int) -> dict[str, int]:
    text, values = scrape(port)
    # Every family says what it is.
    for family in {n for n, _, _ in samples(text)}:
        assert f"# TYPE {family} " in text and f"# HELP {family} " in text, family
    return {k: int(v) for k, v in values.items()}


def _consume(bootstrap: str, topic: str, timeout_s: float) -> list[bytes]:
    consumer = RecordConsumer(bootstrap, uuid.uuid4().hex)
    consumer.subscribe([topic])
    out: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    idle_until = time.monotonic() + 5
    try:
        while time.monotonic() < deadline and time.monotonic() < idle_until:
            for msg in consumer.consume(5000, 0.5):
                if msg.value() is not None:
                    out.append(msg.value())
                    idle_until = time.monotonic() + 3
    finally:
        consumer.close()
    return out


def test_broker_outage_loses_nothing_uncounted_and_duplicates_nothing(
    own_broker: Broker, topics: Topics, bpf_built: None
) -> None:
    bootstrap = own_broker.bootstrap
    health_topic = topics.collector_health
    ensure_topics(bootstrap, [TopicSpec(topics.raw_tcp), TopicSpec(health_topic)])
    metrics_port = _free_port()
    env = {
        **os.environ,
        "FLOWSCOPE_BOOTSTRAP_SERVERS": bootstrap,
        "FLOWSCOPE_TOPIC_PREFIX": topics.prefix,
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "collector",
            "--ringbuf-bytes",
            "4194304",
            "--metrics-port",
            str(metrics_port),
            "--health-interval-seconds",
            "1",
            "--stats-interval-seconds",
            "1",
            "--flush-timeout-seconds",
            "60",
            "--node-name",
            f"outage-{uuid.uuid4().hex[:6]}",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    log: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            if "collector ready" in line:
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop_serving = threading.Event()
    server = threading.Thread(target=_serve, args=(listener, stop_serving), daemon=True)
    server.start()
    client_ports: list[int] = []
    try:
        assert ready.wait(60), "".join(log)
        client_ports += _connections(port, PER_PHASE)  # broker up
        time.sleep(1.5)
        before = _metrics(metrics_port)
        assert before["flowscope_collector_kafka_messages_total{outcome=delivered}"] > 0, before
        assert probe(metrics_port, "readyz") == (200, "ok")

        own_broker.stop()  # the outage
        client_ports += _connections(port, PER_PHASE)
        time.sleep(2)
        during = _metrics(metrics_port)
        assert proc.poll() is None, "collector died when the broker went away"
        # Buffered, not lost.
        assert during["flowscope_collector_kafka_in_flight_messages"] > 0, during
        # Still reading the ring: an outage of Kafka is no reason to restart the collector.
        assert probe(metrics_port, "livez") == (200, "ok")
        assert probe(metrics_port, "readyz") == (200, "ok")

        own_broker.start()
        client_ports += _connections(port, PER_PHASE)
        time.sleep(2)
    finally:
        stop_serving.set()
        server.join(5)
        listener.close()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0, "".join(log)
    final = next(line for line in reversed(log) if "final stats" in line)
    counters = dict(kv.split("=") for kv in final.split("final stats ")[1].split())
    # Every counter the collector keeps (the health record's keys) has a /metrics name.
    assert counters and VOCABULARY.unrouted(counters) == [], VOCABULARY.unrouted(counters)
    assert "flowscope_collector_ringbuf_lost_records_total{program=tcpconn}" in during, during
    # Record counts (a batch message holds many records).
    dropped = sum(
        int(counters[k]) for k in ("records_dropped_buffer_full", "records_delivery_failed")
    )
    dropped += int(counters["kernel_lost_ringbuf"]) + int(counters["decode_errors"])

    codec = JsonCodec(RawTcpConnection)
    records = [
        r for v in _consume(bootstrap, topics.raw_tcp, timeout_s=60) for r in codec.decode_batch(v)
    ]
    ours = [
        (r.role, r.local_port, r.remote_port)
        for r in records
        if port in (r.local_port, r.remote_port) and not r.interim
    ]
    # A multiset: loopback connections may reuse a client port still in TIME_WAIT
    # (net.ipv4.tcp_tw_reuse=2, the default), so one (role, ports) can be two connections.
    made = Counter(client_ports)
    expected = Counter({("client", p, port): n for p, n in made.items()}) + Counter(
        {("server", port, p): n for p, n in made.items()}
    )
    got = Counter(ours)
    assert not got - expected, f"records arrived twice: {got - expected}"
    missing = expected - got
    ends = sum(expected.values())
    # Every missing connection end is accounted for by a loss counter.
    assert missing.total() <= dropped, (missing.total(), counters)
    assert int(counters["records_delivered"]) >= ends - dropped
    health = [
        JsonCodec(CollectorHealth).decode(v)
        for v in _consume(bootstrap, health_topic, timeout_s=20)
    ]
    assert health and "dropped_buffer_full" in health[-1].counters
    assert max(h.counters["records_delivered"] for h in health) >= ends - dropped
    print(
        f"outage: {ends} connection ends, {len(ours)} arrived, "
        f"{missing.total()} missing, loss counters {dropped}"
    )
