"""The collector is SIGKILLed and restarted: connections that end while it is away are
reported after it, once each, and its counters say nothing was lost.

The TCP programs, their links and maps are pinned in bpffs (``--pin-root``): the kernel side
goes on gathering while no collector runs, and the restarted one resumes the same ring
buffer. The test ends by uninstalling the pins; its ``finally`` removes them too, whatever
failed. The raw topic is read to its end (high watermarks), not until a quiet spell.
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

import pytest
from confluent_kafka import TopicPartition

from collector.kernel.pins import DEFAULT_PIN_ROOT, remove_tree
from collector.settings import DEFAULT_BPF_OBJECT
from collector.tcp.events import DecodeStats, clock_offset_ns, decode_batch
from collector.tcp.source import TcpConnSource
from flowscope.codec import JsonCodec
from flowscope.kafka import RecordConsumer, TopicSpec, ensure_topics
from flowscope.records import RawTcpConnection
from flowscope.resources import SOURCE_ROOT as REPO_ROOT
from flowscope.topics import Topics

PER_PHASE = 30
RECORD_BYTES = 160  # tcpconn_event (152 bytes) and its 8-byte ring header


class CollectorProcess:
    """``python -m collector`` with its log kept; ``ready`` once its programs run."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.log: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collector", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            if "collector ready" in line:
                self.ready.set()

    def final_counters(self) -> dict[str, int]:
        line = next(line for line in reversed(self.log) if "final stats" in line)
        pairs = (kv.split("=") for kv in line.split("final stats ")[1].split())
        return {k: int(v) for k, v in pairs}

    def stop(self, sig: int) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


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
            conn.sendall(b"r" * 40)


def _connections(port: int, count: int) -> list[int]:
    """``count`` finished loopback connections to our listener; their client ports."""
    ports = []
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as c:
            ports.append(c.getsockname()[1])
            c.sendall(b"s" * 100)
            c.shutdown(socket.SHUT_WR)
            while c.recv(65536):
                pass
    return ports


def _ours(records: list[RawTcpConnection], port: int) -> Counter[tuple[str, int, int]]:
    return Counter(
        (r.role, r.local_port, r.remote_port)
        for r in records
        if port in (r.local_port, r.remote_port) and not r.interim
    )


def _expected(client_ports: list[int], port: int) -> Counter[tuple[str, int, int]]:
    # A multiset: a client port in TIME_WAIT can be reused (tcp_tw_reuse) by a later one.
    made = Counter(client_ports)
    return Counter({("client", p, port): n for p, n in made.items()}) + Counter(
        {("server", port, p): n for p, n in made.items()}
    )


class RawReader:
    """Reads the raw topic from its start; :meth:`to_end` stops at the high watermarks."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._codec = JsonCodec(RawTcpConnection)
        self._topic = topic
        self._consumer = RecordConsumer(bootstrap, uuid.uuid4().hex, {"enable.auto.commit": False})
        self._partitions = [TopicPartition(topic, p, 0) for p in self._consumer.partitions(topic)]
        self._consumer.assign(self._partitions)
        self.records: list[RawTcpConnection] = []

    def _poll(self) -> None:
        for msg in self._consumer.consume(5000, 0.5):
            if msg.value() is not None:
                self.records.extend(self._codec.decode_batch(msg.value()))

    def until(self, done: Counter[tuple[str, int, int]], port: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not done <= _ours(self.records, port) and time.monotonic() < deadline:
            self._poll()

    def to_end(self, timeout_s: float = 60) -> None:
        ends = {}
        for tp in self._partitions:
            ends[tp.partition] = self._consumer.watermarks(tp, timeout_s=10)[1]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = self._consumer.position(self._partitions)
            if all(tp.offset >= ends[tp.partition] or ends[tp.partition] == 0 for tp in positions):
                return
            self._poll()
        raise AssertionError(f"raw topic not read to its end {ends} in {timeout_s}s")

    def close(self) -> None:
        self._consumer.close()


@pytest.fixture
def node() -> Iterator[str]:
    """A node name of its own, whose pins are removed however the test ends."""
    name = f"restart-{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        remove_tree(DEFAULT_PIN_ROOT / name)


def test_sigkilled_collector_restarts_and_reports_what_ended_meanwhile(
    kafka_bootstrap: str, topics: Topics, bpf_built: None, node: str
) -> None:
    ensure_topics(kafka_bootstrap, [TopicSpec(topics.raw_tcp)])
    env = {
        **os.environ,
        "FLOWSCOPE_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "FLOWSCOPE_TOPIC_PREFIX": topics.prefix,
    }
    args = [
        "--node-name",
        node,
        "--pin-root",
        str(DEFAULT_PIN_ROOT),
        "--udp-interval-seconds",
        "0",
        "--stats-interval-seconds",
        "1",
        "--flush-timeout-seconds",
        "30",
    ]
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop_serving = threading.Event()
    server = threading.Thread(target=_serve, args=(listener, stop_serving), daemon=True)
    server.start()
    reader = RawReader(kafka_bootstrap, topics.raw_tcp)
    first = CollectorProcess(args, env)
    second: CollectorProcess | None = None
    try:
        assert first.ready.wait(60), "".join(first.log)
        before = _connections(port, PER_PHASE)
        reader.until(_expected(before, port), port, timeout_s=60)  # delivered, then killed
        assert _expected(before, port) <= _ours(reader.records, port), "".join(first.log)
        assert first.stop(signal.SIGKILL) == -signal.SIGKILL

        while_down = _connections(port, PER_PHASE)  # nobody reads the ring now
        second = CollectorProcess(args, env)
        assert second.ready.wait(60), "".join(second.log)
        resumed = next(line for line in second.log if "resumed" in line)
        after = _connections(port, PER_PHASE)
        reader.until(_expected(before + while_down + after, port), port, timeout_s=60)
        assert second.stop(signal.SIGTERM) == 0, "".join(second.log)
        reader.to_end()
    finally:
        stop_serving.set()
        server.join(5)
        listener.close()
        for proc in (first, second):
            if proc is not None:
                proc.stop(signal.SIGKILL)
        reader.close()

    expected = _expected(before + while_down + after, port)
    got = _ours(reader.records, port)
    assert not got - expected, f"reported twice: {got - expected}"
    assert not expected - got, f"never reported: {expected - got}\n{''.join(second.log)}"
    counters = second.final_counters()
    lost = {
        k: counters[k]
        for k in (
            "kernel_lost_ringbuf",
            "kernel_track_failed",
            "records_dropped_buffer_full",
            "records_delivery_failed",
            "decode_errors",
        )
    }
    assert not any(lost.values()), lost
    assert counters["kernel_restart_resumed"] == 1, counters
    # Every end of the connections made while it was down waited in the ring, and more
    # (the rest of the machine's TCP traffic, also recorded).
    backlog = counters["kernel_restart_backlog_records"]
    assert backlog >= 2 * PER_PHASE, (backlog, resumed)
    ring = backlog * RECORD_BYTES
    print(
        f"restart: {expected.total()} connection ends made, all reported once; "
        f"{backlog} records ({ring} bytes of ring) waited while down"
    )

    uninstall = subprocess.run(
        [sys.executable, "-m", "collector", "--uninstall", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert uninstall.returncode == 0, uninstall.stderr
    assert not (DEFAULT_PIN_ROOT / node).exists(), list((DEFAULT_PIN_ROOT / node).rglob("*"))


def test_upgrade_counts_what_the_old_generation_held(bpf_built: None, node: str) -> None:
    """A new BPF object (here: another ring size, so another generation) takes over: the old
    programs are unpinned after the new ones run, and what the old ring still held (another
    layout, never decoded) is counted, not silently dropped."""
    pin_dir = DEFAULT_PIN_ROOT / node / "tcpconn"
    with TcpConnSource(DEFAULT_BPF_OBJECT, ringbuf_bytes=1 << 20, pin_dir=pin_dir) as old:
        assert old.restart.mode == "fresh"
        old_generation = old.restart.generation
    listener = socket.create_server(("127.0.0.1", 0))
    stop_serving = threading.Event()
    server = threading.Thread(target=_serve, args=(listener, stop_serving), daemon=True)
    server.start()
    try:
        _connections(listener.getsockname()[1], 10)  # into the old ring, unread
        with TcpConnSource(DEFAULT_BPF_OBJECT, ringbuf_bytes=2 << 20, pin_dir=pin_dir) as new:
            report = new.restart
            counters = new.kernel_counters()
            port = listener.getsockname()[1]
            made = _connections(port, 5)
            seen = _ours([], port)
            deadline = time.monotonic() + 10
            while not _expected(made, port) <= seen and time.monotonic() < deadline:
                new.wait(0.2)
                seen += Counter(
                    (str(e.role), e.local_port, e.remote_port)
                    for e in decode_batch(new.read(), clock_offset_ns(), DecodeStats())
                    if port in (e.local_port, e.remote_port) and not e.interim
                )
    finally:
        stop_serving.set()
        server.join(5)
        listener.close()
    assert report.mode == "upgraded", report
    assert report.generation != old_generation
    assert not (pin_dir / old_generation).exists()
    assert report.upgrade_discarded_records >= 20, report  # both ends of the 10
    assert counters["restart_upgrade_discarded_records"] == report.upgrade_discarded_records
    assert _expected(made, port) <= seen, seen  # the new programs report from the start
