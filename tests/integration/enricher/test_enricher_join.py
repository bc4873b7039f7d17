"""The enricher against the real broker: publish metadata, join raw records, dead-letter bad ones.

Uses the shared fixtures ``kafka_bootstrap`` (a running devbroker) and ``topics`` (a random
topic prefix) from tests/conftest.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Message, Producer

# Re-exported by confluent_kafka.admin, but not in a way its type hints declare.
from confluent_kafka.admin._config import ConfigResource

from enricher.join.joiner import Joiner
from enricher.metrics import VOCABULARY
from enricher.publish.kubeobjects import ParsedObjects
from enricher.publish.publisher import MetadataPublisher
from enricher.settings import Settings
from flowscope.codec import JsonCodec
from flowscope.kafka import RecordConsumer, admin_client
from flowscope.metrics import probe, scrape
from flowscope.records import DeadLetter, EnrichedTcpConnection, RawTcpConnection
from flowscope.records.metadata import NodeMeta
from flowscope.topics import Topics

REPO = Path(__file__).resolve().parents[3]
S = 1_000_000_000
NOW = time.time_ns()
POD_START = NOW - 600 * S


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns // S, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pod_yaml(name: str, uid: str, ip: str, node: str, owner: str, hash_: str = "") -> str:
    labels = f"{{app: {name}, pod-template-hash: '{hash_}'}}" if hash_ else f"{{app: {name}}}"
    return textwrap.dedent(
        f"""\
        - apiVersion: v1
          kind: Pod
          metadata:
            name: {name}
            namespace: shop
            uid: {uid}
            labels: {labels}
            ownerReferences: [{{kind: {owner.split("/")[0]}, name: {owner.split("/")[1]},
                               controller: true, uid: o-{uid}}}]
          spec: {{nodeName: {node}, containers: [{{name: main, image: busybox}}]}}
          status:
            phase: Running
            startTime: "{_rfc3339(POD_START)}"
            podIP: {ip}
            podIPs: [{{ip: {ip}}}]
        """
    )


def _objects_yaml(extra_pods: str = "") -> str:
    nodes = "".join(
        textwrap.dedent(
            f"""\
            - apiVersion: v1
              kind: Node
              metadata:
                name: node-{z}
                labels: {{topology.kubernetes.io/zone: zone-{z}, topology.kubernetes.io/region: r1}}
              status: {{addresses: [{{type: InternalIP, address: 192.168.77.{i}}}]}}
            """
        )
        for i, z in enumerate("ab", start=1)
    )
    pods = _pod_yaml(
        "frontend-6c8f9-x1", "uid-fe", "10.77.1.10", "node-a", "ReplicaSet/frontend-6c8f9", "6c8f9"
    ) + _pod_yaml("db-0", "uid-db", "10.77.2.20", "node-b", "StatefulSet/db")
    svc = textwrap.dedent(
        """\
        - apiVersion: v1
          kind: Service
          metadata: {name: db, namespace: shop}
          spec: {clusterIP: 10.96.77.1, ports: [{port: 5432, protocol: TCP}]}
        """
    )
    body = textwrap.indent(nodes + pods + extra_pods + svc, "  ")
    return f"apiVersion: v1\nkind: List\nitems:\n{body}"


def _raw(**kw: Any) -> bytes:
    base: dict[str, Any] = {
        "node": "node-a",
        "start_time_ns": NOW,
        "end_time_ns": NOW + S,
        "role": "client",
        "family": 4,
        "local_addr": "10.77.1.10",
        "local_port": 41000,
        "remote_addr": "10.77.2.20",
        "remote_port": 5432,
        "pid": 4242,
        "comm": "psql",
        "cgroup_id": 9,
        "cgroup_path": "kubepods/poduid-fe/c0ffee",
        "pod_uid": "uid-fe",
        "container_id": "c0ffee",
        "bytes_sent": 1234,
        "bytes_received": 56789,
        "srtt_us": 210,
        "retrans_segs": 0,
        "connect_latency_us": 350,
    }
    base.update(kw)
    return msgspec.json.encode(RawTcpConnection(**base))


def _publish_cli(bootstrap: str, topics: Topics, path: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "enricher", "publish", "--file", str(path)],
        cwd=REPO,
        env={
            **os.environ,
            "FLOWSCOPE_BOOTSTRAP_SERVERS": bootstrap,
            "FLOWSCOPE_TOPIC_PREFIX": topics.prefix,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _consume(bootstrap: str, topic: str, n: int, timeout_s: float = 30.0) -> list[Message]:
    consumer = RecordConsumer(bootstrap, f"test-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < n and time.monotonic() < deadline:
            got += consumer.consume(100, 0.5)
    finally:
        consumer.close()
    assert len(got) == n, f"expected {n} records on {topic}, got {len(got)} in {timeout_s}s"
    return got


def _value(msg: Message) -> bytes:
    value = msg.value()
    assert isinstance(value, bytes), f"expected a value at offset {msg.offset()}"
    return value


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        producer.produce(topic, value=value, key=b"k")
    assert producer.flush(30) == 0


@contextmanager
def _running_joiner(bootstrap: str, topics: Topics, **settings: Any) -> Iterator[Joiner]:
    """A joiner in its own thread, its metadata loaded; stopped (and checked) on the way out.

    One record per output message: these tests follow single records by their Kafka key
    (batched output has its own test, test_enricher_batching.py)."""
    j = Joiner(
        Settings(
            bootstrap_servers=bootstrap,
            topic_prefix=topics.prefix,
            consumer_group=f"test-enricher-{uuid.uuid4().hex[:8]}",
            poll_timeout_s=0.1,
            output_batch_records=1,
            **settings,
        )
    )
    stop = threading.Event()
    thread = threading.Thread(target=j.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert j.ready.wait(60), "joiner did not load metadata and subscribe within 60s"
        yield j
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), "joiner did not stop within 60s"


@pytest.fixture
def objects_file(tmp_path: Path) -> Path:
    path = tmp_path / "objects.yaml"
    path.write_text(_objects_yaml())
    return path


def test_publish_join_and_dead_letter(
    kafka_bootstrap: str, topics: Topics, objects_file: Path, tmp_path: Path
) -> None:
    out = _publish_cli(kafka_bootstrap, topics, objects_file)
    assert "Node=2" in out and "Pod=2" in out and "Service=1" in out, out
    assert "tombstones=0" in out, out
    admin = admin_client(kafka_bootstrap)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topics.metadata)
    config = admin.describe_configs([resource])[resource].result(timeout=30)
    assert config["cleanup.policy"].value == "compact"

    # The joiner starts only now: its state must come from reading the topic back.
    with _running_joiner(kafka_bootstrap, topics, stats_interval_s=1.0) as j:
        assert set(j.state.pods) == {"uid-fe", "uid-db"}

        client_side = _raw()
        server_side = _raw(
            node="node-b",
            role="server",
            local_addr="10.77.2.20",
            local_port=5432,
            remote_addr="10.77.1.10",
            remote_port=41000,
            pod_uid="uid-db",
            container_id="dbdbdb",
            pid=7,
            comm="postgres",
            bytes_sent=56789,
            bytes_received=1234,
            connect_latency_us=None,
        )
        not_json = b"{this is not json"
        wrong_fields = b'{"v": 1, "node": "node-a"}'
        future = _raw(v=2)
        after_bad = _raw(remote_addr="1.1.1.1", remote_port=443, local_port=41001)
        _produce(
            kafka_bootstrap,
            topics.raw_tcp,
            [client_side, server_side, not_json, wrong_fields, future, after_bad],
        )

        enriched = _consume(kafka_bootstrap, topics.enriched_tcp, 3)
        letters = _consume(kafka_bootstrap, topics.deadletter, 3)

        # Metadata published after start is followed: a new pod becomes resolvable.
        objects_file.write_text(
            _objects_yaml(_pod_yaml("late-1", "uid-late", "10.77.2.99", "node-b", "DaemonSet/ds"))
        )
        assert "Pod=3" in _publish_cli(kafka_bootstrap, topics, objects_file)
        deadline = time.monotonic() + 30
        while "uid-late" not in j.state.pods and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "uid-late" in j.state.pods
        _produce(kafka_bootstrap, topics.raw_tcp, [_raw(remote_addr="10.77.2.99")])
        late = _consume(kafka_bootstrap, topics.enriched_tcp, 4)[-1]

        # And a pod gone from the file gets a tombstone: the joiner retires it.
        objects_file.write_text(_objects_yaml())
        assert "tombstones=1" in _publish_cli(kafka_bootstrap, topics, objects_file)
        deadline = time.monotonic() + 30
        while j.state.counters.tombstones < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        retired = j.state.pod("uid-late")
        assert retired is not None and retired.end_time_ns is not None

    decoded = [msgspec.json.decode(_value(m), type=EnrichedTcpConnection) for m in enriched]
    by_role = {(e.observer_role, e.server.port): e for e in decoded}
    c = by_role[("client", 5432)]
    assert enriched[0].key() == b"shop/Deployment/frontend"
    assert c.client.attribution == "pod" and c.server.attribution == "pod"
    assert (c.client.pod_name, c.client.pod_uid, c.client.namespace) == (
        "frontend-6c8f9-x1",
        "uid-fe",
        "shop",
    )
    assert (c.client.workload_kind, c.client.deployment) == ("Deployment", "frontend")
    assert (c.client.node, c.client.zone, c.client.region) == ("node-a", "zone-a", "r1")
    assert (c.client.pid, c.client.command, c.client.container_id) == (4242, "psql", "c0ffee")
    assert (c.server.pod_name, c.server.statefulset, c.server.node, c.server.zone) == (
        "db-0",
        "db",
        "node-b",
        "zone-b",
    )
    assert (c.client.address, c.client.port, c.server.address) == (
        "10.77.1.10",
        41000,
        "10.77.2.20",
    )
    assert (c.bytes_client_to_server, c.bytes_server_to_client) == (1234, 56789)
    assert c.peer_class == "cross_zone" and c.client_observed is True
    assert (c.connect_latency_us, c.srtt_us, c.observer_node) == (350, 210, "node-a")
    assert (c.start_time_ns, c.end_time_ns) == (NOW, NOW + S)

    sv = by_role[("server", 5432)]
    assert sv.observer_node == "node-b"
    assert (sv.client.pod_uid, sv.client.zone, sv.client.pid) == ("uid-fe", "zone-a", None)
    assert (sv.server.pod_uid, sv.server.command, sv.server.pid) == ("uid-db", "postgres", 7)
    assert (sv.bytes_client_to_server, sv.bytes_server_to_client) == (1234, 56789)
    assert sv.client_observed is True and sv.peer_class == "cross_zone"
    assert enriched[1].key() == b"shop/Deployment/frontend"  # a pair lands on one key

    ext = by_role[("client", 443)]
    assert ext.server.attribution == "external" and ext.peer_class == "internet"

    late_rec = msgspec.json.decode(_value(late), type=EnrichedTcpConnection)
    assert (late_rec.server.pod_name, late_rec.server.daemonset) == ("late-1", "ds")
    assert late_rec.peer_class == "cross_zone"

    dead = [msgspec.json.decode(_value(m), type=DeadLetter) for m in letters]
    assert [d.offset for d in dead] == [2, 3, 4]
    assert all(d.stage == "enricher" and d.source_topic == topics.raw_tcp for d in dead)
    assert "not valid JSON" in dead[0].reason and dead[0].payload == not_json.decode()
    assert "invalid field" in dead[1].reason and "Object missing required field" in dead[1].reason
    assert dead[1].payload == wrong_fields.decode()
    assert "unsupported schema version v=2" in dead[2].reason
    assert dead[2].key == "k"

    m = j.metrics()
    assert m["enricher_records_in_total"] == 7
    assert m["enricher_records_enriched_total"] == 4
    assert m["enricher_deadletter_total"] == 3
    assert m["enricher_deadletter_decode_total"] == 2
    assert m["enricher_deadletter_unsupported_version_total"] == 1
    assert m["enricher_remote_external_total"] == 1
    assert m["enricher_produce_delivered_total"] == 7
    assert m["enricher_produce_delivery_failed_total"] == 0


def test_a_node_moved_to_another_zone_moves_its_pods_from_then_on(
    kafka_bootstrap: str, topics: Topics, objects_file: Path
) -> None:
    """The join keeps each end encoded until its metadata changes: a node relabelled to
    another zone through the metadata topic must re-zone its pods' records from then on, and
    leave the other node's pods as they were."""
    _publish_cli(kafka_bootstrap, topics, objects_file)
    with _running_joiner(kafka_bootstrap, topics) as j:
        _produce(kafka_bootstrap, topics.raw_tcp, [_raw(), _raw(remote_addr="1.1.1.1")])
        before = _consume(kafka_bootstrap, topics.enriched_tcp, 2)
        # Only the node's record: the file publisher would rewrite every pod's record too
        # (a new process has not seen them), and a pod's change drops its end anyway.
        moved = NodeMeta(name="node-b", zone="zone-a", region="r1", addresses=["192.168.77.2"])
        MetadataPublisher(kafka_bootstrap, topics).publish(
            ParsedObjects(metas=[moved]), prune=False
        )
        deadline = time.monotonic() + 30
        while j.state.nodes["node-b"].zone != "zone-a" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert j.state.nodes["node-b"].zone == "zone-a", "the node's new zone did not arrive"
        _produce(kafka_bootstrap, topics.raw_tcp, [_raw(), _raw(remote_addr="1.1.1.1")])
        after = _consume(kafka_bootstrap, topics.enriched_tcp, 4)[2:]
    records = [msgspec.json.decode(_value(m), type=EnrichedTcpConnection) for m in before + after]
    to_db = [r for r in records if r.server.pod_uid == "uid-db"]
    assert [(r.client.zone, r.server.zone, r.peer_class) for r in to_db] == [
        ("zone-a", "zone-b", "cross_zone"),
        ("zone-a", "zone-a", "same_zone"),
    ]
    to_internet = [r for r in records if r.server.attribution == "external"]
    assert [(r.client.pod_uid, r.client.zone) for r in to_internet] == [("uid-fe", "zone-a")] * 2


def test_join_cli_stops_cleanly_on_sigterm(
    kafka_bootstrap: str, topics: Topics, objects_file: Path
) -> None:
    _publish_cli(kafka_bootstrap, topics, objects_file)
    metrics_port = _free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "enricher", "join", "--stats-interval-seconds", "0.5"),
            *("--metrics-port", str(metrics_port)),
        ],
        cwd=REPO,
        env={
            **os.environ,
            "FLOWSCOPE_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "FLOWSCOPE_TOPIC_PREFIX": topics.prefix,
            "FLOWSCOPE_ENRICHER_GROUP": f"test-{uuid.uuid4().hex[:8]}",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _produce(kafka_bootstrap, topics.raw_tcp, [_raw()])
        record = _consume(kafka_bootstrap, topics.enriched_tcp, 1, timeout_s=60)[0]
        # The command line's default batches output: a JSON array, here of one record.
        (first,) = JsonCodec(EnrichedTcpConnection).decode_batch(_value(record))
        assert first.server.pod_uid == "uid-db"
        text, scraped = scrape(metrics_port)
        # Both joiners (TCP and datagram) loaded and consuming, their loops turning.
        deadline = time.monotonic() + 30
        while probe(metrics_port, "readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert probe(metrics_port, "readyz") == (200, "ok")
        assert probe(metrics_port, "livez") == (200, "ok")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    final = [line for line in stderr.splitlines() if "final counters:" in line]
    assert final, stderr
    assert "enricher_records_in_total=1 " in final[-1]
    assert "enricher_records_enriched_total=1 " in final[-1]
    assert "enricher_produce_delivered_total=1 " in final[-1]
    # The same counters on /metrics, under their names, both joiners, typed and described.
    assert scraped["flowscope_enricher_records_in_total{signal=tcp}"] == 1, scraped
    assert scraped["flowscope_enricher_records_enriched_total{signal=tcp}"] == 1, scraped
    assert scraped["flowscope_enricher_records_in_total{signal=dns}"] == 0, scraped
    assert "# TYPE flowscope_enricher_holdback_held_records gauge" in text
    assert "# HELP flowscope_enricher_kafka_messages_total " in text
    keys = [kv.split("=")[0] for kv in final[-1].split("final counters: ")[1].split()]
    assert keys and VOCABULARY.unrouted(keys) == [], VOCABULARY.unrouted(keys)
