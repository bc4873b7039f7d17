"""SIGTERM stops ``python -m enricher publish --watch`` within its shutdown bound even with
the broker away: the changes it watched meanwhile are dropped from its queue and counted
(``publisher_produce_undelivered_total``); the next leader relists and writes them.

Real parts: a kube-apiserver (kube/apiserver.sh) and a private broker (devbroker.Broker in
a temporary state dir on free ports, stopped while the shared one serves others).
"""

# mypy: disable-error-code="no-untyped-call"

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubehelp_enricher import create_pod
from kubernetes import client

from devbroker import Broker
from flowscope.topics import Topics

REPO = Path(__file__).resolve().parents[3]
PODS = 3
# Well above the measured stop (logged below) and the default bound (5 s): a stop that
# waits out a 30 s flush, or a 10 s join per watch, fails here.
EXIT_BOUND_S = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(
        state_dir=tmp_path / "kafka", port=free_port(), controller_port=free_port(), heap_mb=384
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_watch_publisher_stops_within_its_bound_with_the_broker_down(
    own_broker: Broker, kubeconfig: Path, api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:8]}")
    log_path = tmp_path / "publish.stderr"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "enricher",
                "publish",
                "--watch",
                "--kubeconfig",
                str(kubeconfig),
                "--leader-election",
                "false",
                "--stats-interval-seconds",
                "1",
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            env={
                **os.environ,
                "FLOWSCOPE_BOOTSTRAP_SERVERS": own_broker.bootstrap,
                "FLOWSCOPE_TOPIC_PREFIX": topics.prefix,
            },
        )
    try:
        deadline = time.monotonic() + 90
        while "publisher synced" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        own_broker.stop()
        core = client.CoreV1Api(api)
        for i in range(PODS):  # watched, but nowhere to write them
            create_pod(core, namespace, f"p{i}", "node-x", f"10.80.0.{i + 1}", None)
        time.sleep(2)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=EXIT_BOUND_S)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    text = log_path.read_text()
    print(f"enricher publish --watch: stopped {took:.1f}s after SIGTERM with the broker down")
    assert rc == 0, text[-4000:]
    final = next(line for line in reversed(text.splitlines()) if "final counters:" in line)
    counters = {
        k: int(v) for k, v in (kv.split("=") for kv in final.split("final counters: ")[1].split())
    }
    # Each pod's record (created, then its status), and any heartbeat: at least one per pod.
    assert counters["publisher_produce_undelivered_total"] >= PODS, final
    assert counters["publisher_pod_events_total"] >= PODS, final
