"""A processors worker as a real subprocess, and readers of its output topics."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from flowscope.topics import Topics

REPO = Path(__file__).resolve().parents[3]
S = 1_000_000_000


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    stderr_path: Path
    stdout_path: Path

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
) -> Worker:
    stderr_path, stdout_path = workdir / f"{name}.stderr", workdir / f"{name}.stdout"
    argv = [
        sys.executable, "-m", "processors", "worker",
        "--bootstrap-servers", bootstrap,
        "--topic-prefix", topics.prefix,
        "--app-id", app_id,
        "--state-dir", str(workdir / "state"),
        "--window-seconds", str(window_s),
        "--grace-seconds", "1",
        "--idle-allowance-seconds", "1",
        "--log-interval-seconds", "1",
        "--session-timeout-seconds", "6",
        *(extra or []),
    ]  # fmt: skip
    with stderr_path.open("ab") as err, stdout_path.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            stdout=out,
            stderr=err,
            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    return Worker(proc, stderr_path, stdout_path)


def new_app_id() -> str:
    return f"test-tcp-{uuid.uuid4().hex[:8]}"


def new_consumer(bootstrap: str, topic: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )
    consumer.subscribe([topic])
    return consumer


def consume(consumer: Consumer, timeout_s: float, workers: list[Worker]) -> list[bytes]:
    """Everything that arrives within ``timeout_s``."""
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for w in workers:
            if w.proc.poll() is not None:
                pytest.fail(f"worker exited with {w.proc.returncode}:\n{w.log()[-4000:]}")
        for msg in consumer.consume(num_messages=500, timeout=0.5):
            if msg.error() is not None:
                continue  # topic not created yet, partition EOF
            value = msg.value()
            if value is not None:
                values.append(value)
    return values


def final_counters(worker: Worker) -> dict[str, str]:
    final = re.search(r"final counters (.*)", worker.log())
    assert final is not None, worker.log()[-3000:]
    return dict(kv.split("=", 1) for kv in final.group(1).split())
