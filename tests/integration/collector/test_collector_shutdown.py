"""SIGTERM stops ``python -m collector`` within its flush bound even with the broker away:
what it could not deliver is dropped from the producer's queue and counted in the final
stats line (undelivered, records_undelivered), so every message ends in one outcome.

The shared broker is used by others: this test starts its own (devbroker.Broker in a
temporary state dir on free ports) and stops only that one.
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
from collections.abc import Iterator
from pathlib import Path

import pytest

from devbroker import Broker
from flowscope.kafka import TopicSpec, ensure_topics
from flowscope.resources import SOURCE_ROOT as REPO_ROOT
from flowscope.topics import Topics

# Well above the measured stop (logged below) and the default bound (5 s): a stop that
# waits out a flush per stage, or the broker's return, fails here.
EXIT_BOUND_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def own_broker(root_required: None, tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(
        state_dir=tmp_path / "kafka", port=free_port(), controller_port=free_port(), heap_mb=384
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def connections(port: int, count: int) -> None:
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(b"p" * 100)
            c.shutdown(socket.SHUT_WR)
            while c.recv(65536):
                pass


def serve(listener: socket.socket, stop: threading.Event) -> None:
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        with conn:
            while conn.recv(65536):
                pass


def test_collector_stops_within_its_bound_with_the_broker_down_and_counts_the_rest(
    own_broker: Broker, topics: Topics, bpf_built: None, tmp_path: Path
) -> None:
    bootstrap = own_broker.bootstrap
    ensure_topics(bootstrap, [TopicSpec(topics.raw_tcp), TopicSpec(topics.collector_health)])
    log_path = tmp_path / "collector.stderr"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "collector",
                "--ringbuf-bytes",
                "4194304",
                "--health-interval-seconds",
                "1",
                "--stats-interval-seconds",
                "1",
                "--node-name",
                f"stop-{uuid.uuid4().hex[:6]}",
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            env={
                **os.environ,
                "FLOWSCOPE_BOOTSTRAP_SERVERS": bootstrap,
                "FLOWSCOPE_TOPIC_PREFIX": topics.prefix,
            },
        )
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop_serving = threading.Event()
    server = threading.Thread(target=serve, args=(listener, stop_serving), daemon=True)
    server.start()
    try:
        deadline = time.monotonic() + 60
        while "collector ready" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        connections(port, 20)
        time.sleep(1.5)
        own_broker.stop()
        connections(port, 20)  # their records wait in the producer's queue
        time.sleep(2)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=EXIT_BOUND_S)
        took = time.monotonic() - started
    finally:
        stop_serving.set()
        server.join(5)
        listener.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    text = log_path.read_text()
    print(f"collector: stopped {took:.1f}s after SIGTERM with the broker down")
    assert rc == 0, text[-4000:]
    final = next(line for line in reversed(text.splitlines()) if "final stats" in line)
    counters = {
        k: int(v) for k, v in (kv.split("=") for kv in final.split("final stats ")[1].split())
    }
    # The 40 connection ends made while the broker was away (at least) were not delivered,
    # and say so; every message ended in exactly one outcome, none is left in flight.
    assert counters["records_undelivered"] >= 40, final
    assert counters["in_flight"] == 0, final
    assert counters["produced"] == (
        counters["delivered"] + counters["delivery_failed"] + counters["undelivered"]
    ), final
    assert f"{counters['records_undelivered']} records undelivered" in text, text[-2000:]
