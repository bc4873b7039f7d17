"""A processors worker as a real subprocess, readers of its output topics and of its consumer
group's offsets, and the pieces the fault tests (TCP and DNS) share."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from confluent_kafka import KafkaError, TopicPartition

from flowscope.kafka import RecordConsumer
from flowscope.metrics import scrape
from flowscope.records import Endpoint
from flowscope.topics import Topics
from processors.core.dedupe import FirstPerId, HasMetricId

REPO = Path(__file__).resolve().parents[3]
S = 1_000_000_000
M = TypeVar("M", bound=HasMetricId)


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    stderr_path: Path
    stdout_path: Path
    metrics_port: int = 0  # its /metrics (0: none)

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout_s: float, since: int = 0) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log()[since:])
            if found:
                return found
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            time.sleep(0.2)
        pytest.fail(f"worker log never matched /{pattern}/ in {timeout_s}s:\n{self.log()[-4000:]}")

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM; SIGKILL of its process group if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def start_worker(
    bootstrap: str,
    topics: Topics,
    workdir: Path,
    app_id: str,
    window_s: float,
    extra: list[str] | None = None,
    name: str = "worker",
    metrics_port: int = 0,
) -> Worker:
    stderr_path, stdout_path = workdir / f"{name}.stderr", workdir / f"{name}.stdout"
    argv = [
        sys.executable,
        "-m",
        "processors",
        "worker",
        "--bootstrap-servers",
        bootstrap,
        "--topic-prefix",
        topics.prefix,
        "--group",
        app_id,
        "--state-dir",
        str(workdir / "state"),
        "--window-seconds",
        str(window_s),
        "--grace-seconds",
        "1",
        "--idle-allowance-seconds",
        "1",
        "--log-interval-seconds",
        "1",
        "--session-timeout-seconds",
        "6",
        "--metrics-port",
        str(metrics_port),
        *(extra or []),
    ]
    with stderr_path.open("ab") as err, stdout_path.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            stdout=out,
            stderr=err,
            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    return Worker(proc, stderr_path, stdout_path, metrics_port)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_metric(
    worker: Worker, sample: str, value: float, timeout_s: float
) -> dict[str, float]:
    """Scrapes of the worker's /metrics until ``sample`` reads ``value`` (the worker refreshes
    them once per close tick); the last scrape."""
    deadline = time.monotonic() + timeout_s
    while True:
        text, values = scrape(worker.metrics_port)
        if values.get(sample) == value or time.monotonic() > deadline:
            for family in {name.split("{")[0] for name in values}:
                assert f"# HELP {family} " in text and f"# TYPE {family} " in text, family
            return values
        time.sleep(0.2)


def new_app_id() -> str:
    return f"test-tcp-{uuid.uuid4().hex[:8]}"


def new_consumer(bootstrap: str, topic: str) -> RecordConsumer:
    consumer = RecordConsumer(
        bootstrap,
        f"test-reader-{uuid.uuid4().hex[:8]}",
        {"enable.auto.commit": False, "topic.metadata.refresh.interval.ms": 1000},
        # Read before the worker has created the topic.
        tolerated=(KafkaError.UNKNOWN_TOPIC_OR_PART,),
    )
    consumer.subscribe([topic])
    return consumer


def consume(consumer: RecordConsumer, timeout_s: float, workers: list[Worker]) -> list[bytes]:
    """Everything that arrives within ``timeout_s``."""
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for w in workers:
            if w.proc.poll() is not None:
                pytest.fail(f"worker exited with {w.proc.returncode}:\n{w.log()[-4000:]}")
        for msg in consumer.consume(500, 0.5):
            value = msg.value()
            if value is not None:
                values.append(value)
    return values


def logged_counters(worker: Worker, phrase: str) -> dict[str, str] | None:
    """The counters of the worker's latest log line ``<phrase> key=value ...`` (None: none yet)."""
    found = re.findall(rf"{phrase} (\w+=.*)", worker.log())
    return dict(kv.split("=", 1) for kv in found[-1].split()) if found else None


def final_counters(worker: Worker, phrase: str = "final counters") -> dict[str, str]:
    """The counters a stopped worker logged on exit (TCP: "final counters", DNS: "dns
    counters at exit")."""
    counters = logged_counters(worker, phrase)
    assert counters is not None, worker.log()[-3000:]
    return counters


def pod(name: str, zone: str, namespace: str = "shop", service: str | None = None) -> Endpoint:
    return Endpoint(
        address=f"10.9.0.{len(name)}",
        port=80,
        attribution="pod",
        namespace=namespace,
        workload_kind="Deployment",
        workload_name=name,
        service=service,
        zone=zone,
        region="r1",
    )


def read_until(
    consumer: RecordConsumer,
    workers: list[Worker],
    decode: Callable[[bytes], M],
    dedupe: FirstPerId,
    enough: Callable[[list[M]], bool],
    timeout_s: float,
) -> list[M]:
    """Metrics as a consumer keeps them (the first per ``metric_id``), read until ``enough``
    of them have arrived or ``timeout_s`` has passed."""
    kept: list[M] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        kept += dedupe.keep(decode(v) for v in consume(consumer, 1, workers))
        if enough(kept):
            break
    return kept


def group_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> list[tuple[int, int]]:
    """(committed offset, end offset) per partition of ``topic`` for consumer group ``group``
    (a worker's app id); 0 where nothing is committed. Reads offsets without joining the
    group, so the workers' assignment is not disturbed."""
    consumer = RecordConsumer(bootstrap, group, {"enable.auto.commit": False})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        committed = consumer.committed(tps, timeout_s=10)
        ends = [consumer.watermarks(tp, timeout_s=10)[1] for tp in tps]
    finally:
        consumer.close()
    return [(max(tp.offset, 0), end) for tp, end in zip(committed, ends, strict=True)]
