"""``python -m collector`` as it runs on a node: real kernel events to the real broker.

Starts the collector process, makes one loopback connection with known payloads, stops the
collector with SIGTERM (which must flush), and reads both records back from the raw topic.
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

from flowscope.codec import JsonCodec
from flowscope.kafka import RecordConsumer
from flowscope.records import RawTcpConnection
from flowscope.resources import SOURCE_ROOT as REPO_ROOT
from flowscope.topics import Topics


def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout_s: float) -> list[str]:
    seen: list[str] = []
    done = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if needle in line:
                done.set()
        done.set()

    threading.Thread(target=pump, daemon=True).start()
    if not done.wait(timeout_s) or not any(needle in line for line in seen):
        raise AssertionError(f"collector never logged {needle!r}:\n{''.join(seen)}")
    return seen


def _consume(
    bootstrap: str, topic: str, want: int, timeout_s: float
) -> list[tuple[bytes | None, bytes | None]]:
    consumer = RecordConsumer(bootstrap, f"test-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    out: list[tuple[bytes | None, bytes | None]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(out) < want:
            out += [(msg.key(), msg.value()) for msg in consumer.consume(1000, 0.5)]
    finally:
        consumer.close()
    return out


def test_collector_process_produces_both_ends_and_flushes_on_sigterm(
    kafka_bootstrap: str, topics: Topics, bpf_built: None
) -> None:
    node = f"node-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "FLOWSCOPE_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "FLOWSCOPE_TOPIC_PREFIX": topics.prefix,
        "FLOWSCOPE_NODE_NAME": node,
        "FLOWSCOPE_COLLECTOR_STATS_INTERVAL_SECONDS": "0.5",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "--ringbuf-bytes", "1048576"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        log = _wait_for_line(proc, "collector ready", timeout_s=30)

        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = listener.accept()
        client.sendall(b"q" * 4321)
        got = 0
        while got < 4321:
            got += len(conn.recv(65536))
        conn.sendall(b"r" * 765)
        got = 0
        while got < 765:
            got += len(client.recv(65536))
        client_port = client.getsockname()[1]
        client.close()
        assert conn.recv(10) == b""
        conn.close()
        listener.close()
        time.sleep(0.5)  # the close events reach the ring buffer, then the collector reads
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert rc == 0, "".join(log)
    assert any("final stats" in line for line in log), "".join(log)

    codec = JsonCodec(RawTcpConnection)
    records = [
        (key, record)
        for key, value in _consume(kafka_bootstrap, topics.raw_tcp, want=10_000, timeout_s=8)
        for record in codec.decode_batch(value)
    ]
    ours = [(key, r) for key, r in records if {r.local_port, r.remote_port} == {port, client_port}]
    assert sorted(r.role for _, r in ours) == ["client", "server"], ours
    for key, record in ours:
        assert key == node.encode()  # a host process: keyed by node
        assert record.node == node
        assert record.pid == os.getpid()
        assert record.cgroup_path is not None and record.pod_uid is None
    client_rec = next(r for _, r in ours if r.role == "client")
    server_rec = next(r for _, r in ours if r.role == "server")
    assert (client_rec.bytes_sent, client_rec.bytes_received) == (4321, 765)
    assert (server_rec.bytes_sent, server_rec.bytes_received) == (765, 4321)
    assert client_rec.connect_latency_us and client_rec.connect_latency_us > 0
