"""A joiner fenced by a newer instance with its transactional.id (a restart while the old
process still runs) exits with a clear line and a nonzero code; the newer one resumes at
once, and what the zombie emitted after the fence is never read committed.

Real parts: the broker, ``enricher publish`` and two ``enricher join`` processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from confluent_kafka import Producer
from test_enricher_watermark import REPO, S, objects, pod, raw

from enricher.__main__ import EXIT_FENCED
from flowscope.codec import JsonCodec
from flowscope.kafka import RecordConsumer
from flowscope.records import EnrichedTcpConnection
from flowscope.topics import Topics


def test_a_fenced_joiner_exits_and_its_successor_resumes(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:8]}")
    (tmp_path / "o.yaml").write_text(
        objects(
            pod("fe-0", "uid-fe", "10.79.1.10", time.time_ns() - 3600 * S),
            pod("db", "uid-db", "10.79.2.20", time.time_ns() - 3600 * S),
        )
    )
    env = {
        **os.environ,
        "FLOWSCOPE_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "FLOWSCOPE_TOPIC_PREFIX": topics.prefix,
        "FLOWSCOPE_ENRICHER_GROUP": f"g-{uuid.uuid4().hex[:8]}",
    }
    published = subprocess.run(
        [sys.executable, "-m", "enricher", "publish", "--file", str(tmp_path / "o.yaml")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert published.returncode == 0, published.stderr

    def start(name: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"{name}.stderr"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "enricher",
                    "join",
                    "--instance",
                    "same",
                    "--batch-records",
                    "1",
                    "--dns-enabled",
                    "false",
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        deadline = time.monotonic() + 90
        while "enricher ready" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        return proc, log

    reader = RecordConsumer(
        kafka_bootstrap, f"r-{uuid.uuid4().hex[:8]}", required={"isolation.level": "read_committed"}
    )
    reader.subscribe([topics.enriched_tcp])
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    seen: Counter[int] = Counter()

    def send_and_wait(port: int, timeout_s: float = 60) -> float:
        started = time.monotonic()
        producer.produce(topics.raw_tcp, raw(port, time.time_ns()), key=b"node-a")
        producer.flush(10)
        while not seen[port]:
            assert time.monotonic() - started < timeout_s, f"record {port} never came out"
            for msg in reader.consume(100, 0.2):
                for r in JsonCodec(EnrichedTcpConnection).decode_batch(msg.value()):
                    seen[r.client.port] += 1
        return time.monotonic() - started

    procs: list[subprocess.Popen[bytes]] = []
    try:
        zombie, zombie_log = start("zombie")
        procs.append(zombie)
        send_and_wait(41000)
        restarted = time.monotonic()
        successor, successor_log = start("successor")
        procs.append(successor)
        ready_s = time.monotonic() - restarted
        first_s = send_and_wait(41001)
        resumed_s = time.monotonic() - restarted
        rc = zombie.wait(30)
        # Anything the zombie still had shows up now if it was committed (it must not be).
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for msg in reader.consume(100, 0.2):
                for r in JsonCodec(EnrichedTcpConnection).decode_batch(msg.value()):
                    seen[r.client.port] += 1
    finally:
        reader.close()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print(
        f"fenced: successor ready {ready_s:.1f}s after its start, first record out "
        f"{first_s:.1f}s later ({resumed_s:.1f}s in all); zombie exit {rc}"
    )
    assert rc == EXIT_FENCED, zombie_log.read_text()[-3000:]
    assert "enricher: fenced, stopping:" in zombie_log.read_text()
    assert successor.returncode == 0, successor_log.read_text()[-3000:]
    assert seen == Counter({41000: 1, 41001: 1}), seen
