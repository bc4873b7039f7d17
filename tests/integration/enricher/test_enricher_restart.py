"""The joiner SIGKILLed mid-stream and restarted under the same instance name, against the
real broker: read committed, every raw record comes out exactly once, and the restarted
instance is back to work within seconds (static membership), not after the dead member's
session timeout (45 s).

Both tests read one run (a module fixture): raw records with known ids (``bytes_sent``) are
produced at a steady rate while ``python -m enricher join`` runs as a subprocess; it is killed
once output has been committed, restarted, and the enriched topic is drained to its end with
a read_committed consumer once the group has committed every raw offset.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from confluent_kafka import Producer, TopicPartition

from enricher.publish.kubeobjects import ParsedObjects
from enricher.publish.publisher import MetadataPublisher
from flowscope.codec import JsonCodec
from flowscope.kafka import RecordConsumer, TopicSpec, ensure_topics
from flowscope.records import EnrichedTcpConnection, RawTcpConnection
from flowscope.records.metadata import Meta, NodeMeta, PodMeta
from flowscope.topics import Topics

REPO = Path(__file__).resolve().parents[3]
S = 1_000_000_000
NOW = time.time_ns()
PARTITIONS = 4
RECORDS_PER_MESSAGE = 20  # collector-style batches
MESSAGES_PER_TICK = 8  # every 20 ms: ~8,000 records/s
SEND_BEFORE_KILL_S = 3.0  # at least, and until output has been committed
SEND_AFTER_KILL_S = 6.0
# Generous, yet below the 45 s session timeout a restart without static membership waits.
RESUME_DEADLINE_S = 30.0
ENRICHED = JsonCodec(EnrichedTcpConnection)


def _pod(uid: str, ip: str, node: str) -> PodMeta:
    return PodMeta(
        uid=uid,
        name=f"pod-{uid}",
        namespace="shop",
        node=node,
        ips=[ip],
        start_time_ns=NOW - 600 * S,
        workload_kind="Deployment",
        workload_name=f"wl-{uid}",
    )


METADATA: list[Meta] = [
    NodeMeta(name="node-a", zone="zone-a", region="r1", addresses=["192.168.79.1"]),
    NodeMeta(name="node-b", zone="zone-b", region="r1", addresses=["192.168.79.2"]),
    _pod("client", "10.79.1.10", "node-a"),
    _pod("server", "10.79.2.20", "node-b"),
]


def _raw(record_id: int) -> RawTcpConnection:
    return RawTcpConnection(
        node="node-a",
        start_time_ns=NOW,
        end_time_ns=NOW + S,
        role="client",
        family=4,
        local_addr="10.79.1.10",
        local_port=10000 + record_id % 50000,
        remote_addr="10.79.2.20",
        remote_port=80,
        pid=1,
        comm="curl",
        cgroup_id=1,
        cgroup_path=None,
        pod_uid="client",
        container_id=None,
        bytes_sent=record_id,
        bytes_received=1,
        srtt_us=1,
        retrans_segs=0,
        connect_latency_us=1,
    )


class JoinerProcess:
    """``python -m enricher join`` as a subprocess, its stderr in a file."""

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        group: str,
        instance: str,
        log: Path,
        extra_env: dict[str, str],
    ) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "enricher", "join", "--stats-interval-seconds", "1"],
            cwd=REPO,
            env={
                **os.environ,
                "FLOWSCOPE_BOOTSTRAP_SERVERS": bootstrap,
                "FLOWSCOPE_TOPIC_PREFIX": topics.prefix,
                "FLOWSCOPE_ENRICHER_GROUP": group,
                "FLOWSCOPE_ENRICHER_INSTANCE": instance,
                "FLOWSCOPE_ENRICHER_DNS_ENABLED": "false",
                **extra_env,
            },
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not re.search(pattern, self.log()):
            if self.proc.poll() is not None:
                pytest.fail(f"joiner exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"joiner log never matched /{pattern}/:\n{self.log()[-4000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


class RawSender(threading.Thread):
    """Raw records with ids 0, 1, 2, ... at a steady rate until told to stop."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        self._topic = topic
        self.sent = 0
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                for _ in range(MESSAGES_PER_TICK):
                    batch = [_raw(self.sent + i) for i in range(RECORDS_PER_MESSAGE)]
                    self._producer.produce(
                        self._topic,
                        msgspec.json.encode(batch),
                        partition=(self.sent // RECORDS_PER_MESSAGE) % PARTITIONS,
                    )
                    self.sent += RECORDS_PER_MESSAGE
                self._producer.poll(0)
                time.sleep(0.02)
            assert self._producer.flush(30) == 0, "raw records not delivered"
        except BaseException as exc:
            self.error = exc


class CommittedReader(threading.Thread):
    """A read_committed consumer noting when each enriched record id first shows up."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self._consumer = RecordConsumer(
            bootstrap,
            f"test-reader-{uuid.uuid4().hex[:8]}",
            {"enable.auto.commit": False, "isolation.level": "read_committed"},
        )
        self._consumer.subscribe([topic])
        self.arrived: list[tuple[float, int]] = []  # (monotonic time, id)
        self.stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                for msg in self._consumer.consume(500, 0.1):
                    value = msg.value()
                    if isinstance(value, bytes):
                        now = time.monotonic()
                        self.arrived += [
                            (now, e.bytes_client_to_server) for e in ENRICHED.decode_batch(value)
                        ]
        finally:
            self._consumer.close()

    def count(self) -> int:
        return len(self.arrived)


def _group_done(bootstrap: str, group: str, topic: str) -> bool:
    """Has the group committed every raw partition to its end?"""
    consumer = RecordConsumer(bootstrap, group)
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        committed = consumer.committed(parts, timeout_s=10)
        ends = [consumer.watermarks(tp, timeout_s=10)[1] for tp in parts]
        return all(c.offset == end for c, end in zip(committed, ends, strict=True))
    finally:
        consumer.close()


def drain_committed(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[int]:
    """Every committed enriched record id, read until every partition reports its end."""
    consumer = RecordConsumer(
        bootstrap,
        f"test-drain-{uuid.uuid4().hex[:8]}",
        {
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        },
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    ids: list[int] = []
    at_end = consumer.at_end  # (topic, partition) read to its end since its last message
    deadline = time.monotonic() + timeout_s
    try:
        while len(at_end) < PARTITIONS:
            assert time.monotonic() < deadline, f"{topic} not drained: ends {sorted(at_end)}"
            for msg in consumer.consume(1000, 0.5):
                value = msg.value()
                assert isinstance(value, bytes)
                ids += [e.bytes_client_to_server for e in ENRICHED.decode_batch(value)]
            # Any error other than a partition's end.
            assert consumer.counters.errors == 0, consumer.counters.last_error
    finally:
        consumer.close()
    return ids


@dataclass
class RestartRun:
    sent: int
    committed_at_kill: int  # records read committed when the joiner was killed
    sent_at_kill: int
    ids: list[int]  # every committed enriched record id, drained
    kill_to_ready_s: float
    kill_to_output_s: float | None  # until a record sent after the kill was read committed
    logs: list[str] = field(default_factory=list)
    exit_code: int = 0


def kill_and_restart(
    bootstrap: str, tmp: Path, exactly_once: bool = True, static: bool = True
) -> RestartRun:
    """One run; ``exactly_once`` False or ``static`` False (no instance name) give the
    figures of the behaviour before transactions and static membership."""
    topics = Topics(prefix=f"test-{uuid.uuid4().hex[:10]}")
    ensure_topics(
        bootstrap,
        [
            TopicSpec(topics.raw_tcp, partitions=PARTITIONS),
            TopicSpec(topics.enriched_tcp, partitions=PARTITIONS),
        ],
    )
    MetadataPublisher(bootstrap, topics).publish(ParsedObjects(metas=METADATA), prune=False)
    group = f"test-enricher-{uuid.uuid4().hex[:8]}"
    instance = f"joiner-{uuid.uuid4().hex[:6]}" if static else ""
    # At-least-once: the behaviour before transactions, for the figures to compare with.
    env = {} if exactly_once else {"FLOWSCOPE_ENRICHER_EXACTLY_ONCE": "false"}
    reader = CommittedReader(bootstrap, topics.enriched_tcp)
    sender = RawSender(bootstrap, topics.raw_tcp)
    first = JoinerProcess(bootstrap, topics, group, instance, tmp / "first.log", env)
    second: JoinerProcess | None = None
    try:
        first.wait_for_log(r"enricher ready", 90)
        reader.start()
        sender.start()
        started = time.monotonic()
        deadline = started + 60
        # Mid-stream: output committed and read, more records still coming.
        while time.monotonic() - started < SEND_BEFORE_KILL_S or reader.count() == 0:
            assert time.monotonic() < deadline, f"no output in 60 s:\n{first.log()[-3000:]}"
            time.sleep(0.05)
        first.kill()
        killed_at, sent_at_kill, committed_at_kill = time.monotonic(), sender.sent, reader.count()
        second = JoinerProcess(bootstrap, topics, group, instance, tmp / "second.log", env)
        second.wait_for_log(r"enricher ready", 90)
        ready_at = time.monotonic()
        time.sleep(SEND_AFTER_KILL_S)  # the stream goes on: the restarted joiner takes it
        sender.stop_event.set()
        sender.join(60)
        assert sender.error is None, sender.error
        deadline = time.monotonic() + 120
        while not _group_done(bootstrap, group, topics.raw_tcp):
            assert time.monotonic() < deadline, f"raw not committed:\n{second.log()[-3000:]}"
            time.sleep(0.5)
        reader.stop_event.set()
        reader.join(30)
        after = [t for t, i in reader.arrived if i >= sent_at_kill]
        ids = drain_committed(bootstrap, topics.enriched_tcp)
    finally:
        sender.stop_event.set()
        reader.stop_event.set()
        first.stop()
        code = second.stop() if second is not None else -1
    return RestartRun(
        sent=sender.sent,
        committed_at_kill=committed_at_kill,
        sent_at_kill=sent_at_kill,
        ids=ids,
        kill_to_ready_s=ready_at - killed_at,
        kill_to_output_s=(min(after) - killed_at) if after else None,
        logs=[first.log(), second.log()],
        exit_code=code,
    )


@pytest.fixture(scope="module")
def restart_run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> RestartRun:
    return kill_and_restart(kafka_bootstrap, tmp_path_factory.mktemp("restart"))


def test_sigkill_and_restart_emit_every_record_exactly_once(restart_run: RestartRun) -> None:
    run = restart_run
    assert run.exit_code == 0, run.logs[1][-3000:]
    # Killed mid-stream: some output was committed, most of the stream came after.
    assert 0 < run.committed_at_kill < run.sent_at_kill < run.sent
    assert "final counters:" not in run.logs[0], "the first joiner was not killed"
    counts = Counter(run.ids)
    missing = [i for i in range(run.sent) if i not in counts]
    doubled = {i: n for i, n in counts.items() if n > 1}
    invented = [i for i in counts if not 0 <= i < run.sent]
    assert not missing and not doubled and not invented, (
        f"{len(missing)} lost (first {missing[:5]}), {len(doubled)} duplicated, "
        f"{len(invented)} unknown"
    )
    assert len(run.ids) == run.sent
    print(
        f"\nrecords sent {run.sent}, read committed at the kill {run.committed_at_kill} "
        f"(sent by then {run.sent_at_kill}); drained {len(run.ids)}: 0 lost, 0 duplicated"
    )


def test_restarted_instance_resumes_before_the_session_timeout(restart_run: RestartRun) -> None:
    run = restart_run
    assert run.kill_to_output_s is not None, "no record sent after the kill came out"
    # Measured ~3 s (start-up, metadata load, static rejoin, first commit); the bound is
    # generous yet below the 45 s a rejoin without static membership waits for.
    assert run.kill_to_output_s < RESUME_DEADLINE_S, run.logs[1][-3000:]
    print(
        f"\nkill -> restarted joiner ready {run.kill_to_ready_s:.2f} s, kill -> first record "
        f"sent after the kill read committed {run.kill_to_output_s:.2f} s"
    )
