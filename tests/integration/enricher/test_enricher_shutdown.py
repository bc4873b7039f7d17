"""SIGTERM stops ``python -m enricher join`` within its shutdown bound even with the broker
away: the records it held for metadata are emitted into a transaction that cannot commit,
and the final counters say how many (their input is read again by the next owner).

The shared broker is used by others: this test starts its own (devbroker.Broker in a
temporary state dir on free ports) and stops only that one.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Producer

from devbroker import Broker
from enricher.publish.kubeobjects import parse_text
from enricher.publish.publisher import MetadataPublisher
from flowscope.metrics import scrape
from flowscope.records import RawTcpConnection
from flowscope.topics import Topics

REPO = Path(__file__).resolve().parents[3]
S = 1_000_000_000
HELD = 7
# Well above the measured stop (logged below) and the default shutdown bound (5 s): a stop
# that waits for the broker's return, or for a 30 s commit timeout, fails here.
EXIT_BOUND_S = 15.0

OBJECTS = textwrap.dedent(
    """\
    apiVersion: v1
    kind: List
    items:
    - apiVersion: v1
      kind: Node
      metadata: {name: node-a, labels: {topology.kubernetes.io/zone: zone-a}}
    - apiVersion: v1
      kind: Pod
      metadata: {name: fe-0, namespace: shop, uid: uid-fe}
      spec: {nodeName: node-a, containers: [{name: main, image: busybox}]}
      status: {phase: Running, startTime: "2020-01-01T00:00:00Z", podIP: 10.78.1.10,
               podIPs: [{ip: 10.78.1.10}]}
    """
)


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


def raw(remote_addr: str, port: int) -> bytes:
    now = time.time_ns()
    fields: dict[str, Any] = {
        "node": "node-a",
        "start_time_ns": now - S,
        "end_time_ns": now,
        "role": "client",
        "family": 4,
        "local_addr": "10.78.1.10",
        "local_port": port,
        "remote_addr": remote_addr,
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


def metric(port: int, name: str) -> float:
    try:
        return scrape(port)[1].get(name, -1)
    except OSError:
        return -1


def test_join_stops_within_its_bound_with_the_broker_down_and_counts_what_it_held(
    own_broker: Broker, tmp_path: Path
) -> None:
    bootstrap = own_broker.bootstrap
    topics = Topics(prefix=f"t{uuid.uuid4().hex[:8]}")
    MetadataPublisher(bootstrap, topics).publish(parse_text(OBJECTS))
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
                "300",
                "--cluster-cidrs",
                "10.78.0.0/16",
                "--stats-interval-seconds",
                "1",
                "--instance",
                f"i-{uuid.uuid4().hex[:6]}",
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            env={
                **os.environ,
                "FLOWSCOPE_BOOTSTRAP_SERVERS": bootstrap,
                "FLOWSCOPE_TOPIC_PREFIX": topics.prefix,
                "FLOWSCOPE_ENRICHER_GROUP": f"g-{uuid.uuid4().hex[:8]}",
            },
        )
    try:
        deadline = time.monotonic() + 90
        while "enricher ready" not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        producer = Producer({"bootstrap.servers": bootstrap})
        # Peers in the cluster's CIDR that no metadata names: held for 300 s.
        for i in range(HELD):
            producer.produce(topics.raw_tcp, raw(f"10.78.9.{i + 1}", 40000 + i), key=b"node-a")
        assert producer.flush(30) == 0
        del producer  # no reconnect attempts of its own once the broker is stopped
        held = "flowscope_enricher_holdback_held_records"
        while metric(metrics_port, held) != HELD:
            assert time.monotonic() < deadline, (metric(metrics_port, held), log_path.read_text())
            time.sleep(0.2)

        own_broker.stop()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=EXIT_BOUND_S)
        except subprocess.TimeoutExpired:
            # Where the stop went, without librdkafka's reconnect noise.
            lines = [line for line in log_path.read_text().splitlines() if "|FAIL|" not in line]
            pytest.fail(f"no exit {EXIT_BOUND_S}s after SIGTERM:\n" + "\n".join(lines[-40:]))
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    text = log_path.read_text()
    print(f"enricher join: stopped {took:.1f}s after SIGTERM with the broker down")
    assert rc == 0, text[-4000:]
    final = next(line for line in reversed(text.splitlines()) if "final counters:" in line)
    counters = dict(kv.split("=") for kv in final.split("final counters: ")[1].split())
    # The held records were emitted at the stop, unresolved, into a transaction that could
    # not commit: counted, and their input offsets were not committed (read again later).
    assert counters["enricher_held_released_unresolved_total"] == str(HELD), final
    assert counters["enricher_shutdown_uncommitted_records_total"] == str(HELD), final
    assert counters["enricher_transactions_committed_total"] != "0", final
    assert f"{HELD} records uncommitted" in text, text[-2000:]
