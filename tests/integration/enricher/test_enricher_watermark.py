"""The metadata's watermark: with its publisher stopped, a pod deleted and its IP reused
meanwhile, ``enricher join`` must not name the deleted pod for records newer than the last
heartbeat. Such records wait; when the hold-back ends they go out unresolved and counted,
and when the publisher comes back (a new heartbeat) they are joined with what it wrote.

Real parts: the broker, ``enricher publish`` (a file published on a schedule, one heartbeat
per run) and ``enricher join`` as processes. The publisher is "stopped" by not running it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import Producer

from flowscope.codec import JsonCodec
from flowscope.kafka import RecordConsumer
from flowscope.metrics import scrape
from flowscope.records import EnrichedTcpConnection, RawTcpConnection
from flowscope.topics import Topics

REPO = Path(__file__).resolve().parents[3]
S = 1_000_000_000
HEARTBEAT_S = 1  # joiners trust a heartbeat for two of its intervals
HOLD_S = 8
EXPIRED, CAUGHT_UP = 3, 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns // S, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(name: str, uid: str, ip: str, start_ns: int) -> str:
    return textwrap.dedent(
        f"""\
        - apiVersion: v1
          kind: Pod
          metadata: {{name: {name}, namespace: shop, uid: {uid}}}
          spec: {{nodeName: node-a, containers: [{{name: main, image: busybox}}]}}
          status: {{phase: Running, startTime: "{rfc3339(start_ns)}", podIP: {ip},
                   podIPs: [{{ip: {ip}}}]}}
        """
    )


def objects(*pods: str) -> str:
    node = textwrap.dedent(
        """\
        - apiVersion: v1
          kind: Node
          metadata: {name: node-a, labels: {topology.kubernetes.io/zone: zone-a}}
        """
    )
    return "apiVersion: v1\nkind: List\nitems:\n" + textwrap.indent(node + "".join(pods), "  ")


def publish(bootstrap: str, topics: Topics, path: Path, text: str) -> None:
    path.write_text(text)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "enricher",
            "publish",
            "--file",
            str(path),
            "--heartbeat-interval-seconds",
            str(HEARTBEAT_S),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "FLOWSCOPE_BOOTSTRAP_SERVERS": bootstrap,
            "FLOWSCOPE_TOPIC_PREFIX": topics.prefix,
        },
    )
    assert proc.returncode == 0, proc.stderr


def raw(port: int, end_ns: int) -> bytes:
    fields: dict[str, Any] = {
        "node": "node-a",
        "start_time_ns": end_ns - S // 2,
        "end_time_ns": end_ns,
        "role": "client",
        "family": 4,
        "local_addr": "10.79.1.10",
        "local_port": port,
        "remote_addr": "10.79.2.20",
        "remote_port": 5432,
        "pid": 1,
        "comm": "psql",
        "cgroup_id": 9,
        "cgroup_path": "kubepods/poduid-fe/c0ffee",
        "pod_uid": "uid-fe",
        "container_id": "c0ffee",
        "bytes_sent": 1,
        "bytes_received": 1,
        "srtt_us": 1,
        "retrans_segs": 0,
        "connect_latency_us": 1,
    }
    return msgspec.json.encode(RawTcpConnection(**fields))


def metrics(port: int) -> dict[str, float]:
    try:
        return scrape(port)[1]
    except OSError:
        return {}


def wait_metric(port: int, name: str, value: float, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while metrics(port).get(name) != value:
        assert time.monotonic() < deadline, (name, metrics(port).get(name), log.read_text()[-3000:])
        time.sleep(0.2)


def test_records_past_the_watermark_never_name_a_pod_deleted_while_the_publisher_was_down(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:8]}")
    file = tmp_path / "objects.yaml"
    long_ago = time.time_ns() - 3600 * S
    fe = pod("fe-0", "uid-fe", "10.79.1.10", long_ago)
    publish(
        kafka_bootstrap, topics, file, objects(fe, pod("db-old", "uid-old", "10.79.2.20", long_ago))
    )
    watermark_ns = time.time_ns()
    metrics_port = free_port()
    log_path = tmp_path / "join.stderr"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "enricher",
                "join",
                "--metrics-port",
                str(metrics_port),
                "--holdback-seconds",
                str(HOLD_S),
                "--cluster-cidrs",
                "10.79.0.0/16",
                "--stats-interval-seconds",
                "1",
                "--batch-records",
                "1",
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            env={
                **os.environ,
                "FLOWSCOPE_BOOTSTRAP_SERVERS": kafka_bootstrap,
                "FLOWSCOPE_TOPIC_PREFIX": topics.prefix,
                "FLOWSCOPE_ENRICHER_GROUP": f"g-{uuid.uuid4().hex[:8]}",
            },
        )
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    reader = RecordConsumer(
        kafka_bootstrap, f"r-{uuid.uuid4().hex[:8]}", required={"isolation.level": "read_committed"}
    )
    reader.subscribe([topics.enriched_tcp])
    try:
        deadline = time.monotonic() + 90
        while "enricher ready" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        # Inside the watermark: joined at once, with the pod the metadata names.
        producer.produce(topics.raw_tcp, raw(41000, watermark_ns - S), key=b"node-a")
        producer.flush(30)
        # The publisher stops; db-old is deleted and db-new gets its IP. Nobody writes that.
        time.sleep(2 * HEARTBEAT_S + 1)
        reused_ns = time.time_ns() - S // 2
        for i in range(EXPIRED):
            producer.produce(topics.raw_tcp, raw(42000 + i, time.time_ns()), key=b"node-a")
        producer.flush(30)
        wait_metric(
            metrics_port,
            "flowscope_enricher_holdback_records_total{outcome=watermark}",
            EXPIRED,
            log_path,
        )
        # The hold-back ends before the publisher returns: out, unresolved, counted.
        wait_metric(
            metrics_port,
            "flowscope_enricher_holdback_records_total{outcome=watermark_unresolved}",
            EXPIRED,
            log_path,
            timeout_s=HOLD_S + 30,
        )
        for i in range(CAUGHT_UP):
            producer.produce(topics.raw_tcp, raw(43000 + i, time.time_ns()), key=b"node-a")
        producer.flush(30)
        wait_metric(metrics_port, "flowscope_enricher_holdback_held_records", CAUGHT_UP, log_path)
        # The publisher runs again: db-new, db-old pruned, a new heartbeat.
        publish(
            kafka_bootstrap,
            topics,
            file,
            objects(fe, pod("db-new", "uid-new", "10.79.2.20", reused_ns)),
        )
        wait_metric(
            metrics_port,
            "flowscope_enricher_holdback_records_total{outcome=watermark_caught_up}",
            CAUGHT_UP,
            log_path,
            timeout_s=HOLD_S,
        )
        codec = JsonCodec(EnrichedTcpConnection)
        got: dict[int, EnrichedTcpConnection] = {}
        deadline = time.monotonic() + 30
        while len(got) < 1 + EXPIRED + CAUGHT_UP and time.monotonic() < deadline:
            for msg in reader.consume(100, 0.5):
                for r in codec.decode_batch(msg.value()):
                    got[r.client.port] = r
    finally:
        reader.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    named = {port: (r.server.attribution, r.server.pod_uid) for port, r in got.items()}
    print(f"watermark: {EXPIRED} held then unresolved, {CAUGHT_UP} held then joined: {named}")
    assert named[41000] == ("pod", "uid-old"), named
    # Never the deleted pod: first nobody (the metadata never caught up), then the new one.
    assert [named[42000 + i] for i in range(EXPIRED)] == [("unresolved", None)] * EXPIRED, named
    assert [named[43000 + i] for i in range(CAUGHT_UP)] == [("pod", "uid-new")] * CAUGHT_UP, named
    assert len(got) == 1 + EXPIRED + CAUGHT_UP, named
