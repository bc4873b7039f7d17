"""Broker faults on a three-broker KRaft cluster (replication factor 3, min.insync.replicas
2), end to end: collector -> enricher -> processors, while pods make connections.

- The broker that is the transaction and group coordinator SIGKILLed mid-stream and
  restarted later;
- a rolling restart of the three brokers (each stopped, restarted, and its replicas back in
  sync before the next) under load;
- the whole cluster stopped for a minute: the collector's buffer holds to its bound, what it
  drops is counted per pod and is exactly what is missing downstream of each of this test's
  pods, and every end that arrived is counted once by a consumer keeping the first metric
  per id; the enricher and the processors resume by themselves (restarted when they exit,
  as a Deployment restarts them).

In the first two, every connection the test made is in the enriched topic once per end and counted
once in the pair metrics, and no window is published twice. The cluster is this module's
own (free ports, a temporary state dir) and is stopped even when a test fails.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from demo.readout import TopicReader
from demo.services import (
    PipelineSettings,
    ServiceProcess,
    _env,
    publish_metadata,
    running_pipeline,
)
from devbroker import Cluster as KafkaCluster
from devbroker.ports import free_port_block
from enricher.__main__ import EXIT_FENCED
from flowscope.codec import JsonCodec
from flowscope.kafka import EXIT_HUNG, admin_client
from flowscope.metrics import scrape
from flowscope.records import CollectorHealth, EnrichedTcpConnection, TcpPairMetric
from flowscope.topics import Topics
from processors.core.dedupe import FirstPerId
from simnode import Cluster, NodeSpec, Pod
from simnode.traffic.summary import ClientSummary

PORT = 8080
WINDOW_S = 3.0
GRACE_S = 2.0
# The longest lag the processors' watermark tolerates before records count as late: a
# SIGKILLed leader's partitions stall for the broker session timeout (9 s) plus the election,
# while the other partitions move on.
IDLE_ALLOWANCE_S = 30.0
OUTAGE_S = 60.0
# The processors' wall-clock floor, for what they have read up to the end of (a backlog
# holds their watermark): the enricher may still be catching up after the outage (brokers
# that take a minute to start here, a hung librdkafka call exiting after 90 s, a restart).
OUTAGE_IDLE_ALLOWANCE_S = OUTAGE_S + 240.0
# The collector's producer buffer, in messages: far less than the outage's records.
BUFFER_MESSAGES = 100
CONNECTIONS_PER_BURST = 5
BURST_INTERVAL_MS = 100
PAIR = ("shop/Deployment/frontend", "shop/Deployment/checkout")


@pytest.fixture(scope="module")
def kafka_cluster(
    root_required: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaCluster]:
    cluster = KafkaCluster(tmp_path_factory.mktemp("faults-cluster"), free_port_block(6))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def sim() -> Iterator[Cluster]:
    with Cluster([NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]) as c:
        yield c


def _leader(bootstrap: str, topic: str) -> int:
    """The leader of partition 0 of an internal topic (the devbroker gives the offsets and
    transaction topics one partition: that leader coordinates every group and transaction)."""
    metadata = admin_client(bootstrap).list_topics(topic, timeout=10)
    return int(metadata.topics[topic].partitions[0].leader)


def _wait_in_sync(bootstrap: str, replicas: int, timeout_s: float = 120.0) -> None:
    """Until every partition of every topic has all its replicas in sync (what a rolling
    restart waits for before it takes the next broker down)."""
    admin = admin_client(bootstrap)
    deadline = time.monotonic() + timeout_s
    lagging: list[str] = []
    while time.monotonic() < deadline:
        metadata = admin.list_topics(timeout=10)
        lagging = [
            f"{name}-{p.id}"
            for name, t in metadata.topics.items()
            for p in t.partitions.values()
            if len(p.replicas) == replicas and len(p.isrs) < replicas
        ]
        if not lagging:
            return
        time.sleep(0.5)
    raise AssertionError(f"replicas not back in sync after {timeout_s:.0f}s: {lagging[:10]}")


class Restarter:
    """What the kubelet does for a Deployment: a service that exits is started again (the
    enricher exits, naming the cause, when fenced or when librdkafka hangs on a coordinator
    that went away; the processors when metrics cannot be delivered, unacknowledged). Every
    exit's last lines are kept for the test."""

    def __init__(
        self, services: dict[str, ServiceProcess], settings: PipelineSettings, name: str
    ) -> None:
        self._services, self._settings, self._name = services, settings, name
        self._argv = list(services[name].proc.args)  # type: ignore[arg-type]
        self.exits: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Restarter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._services[self._name].stop()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            svc = self._services[self._name]
            if svc.proc.poll() is None:
                continue
            lines = svc.log_text().strip().splitlines()
            self.exits.append((svc.proc.returncode, "\n".join(lines[-12:])))
            self._services[self._name] = ServiceProcess(
                f"{self._name}-{len(self.exits)}",
                self._argv,
                _env(self._settings),
                self._settings.log_dir,
            )


class Traffic:
    """Bursts of connections from ``client`` to ``server`` in a thread until stopped; the
    client ports of every completed connection are kept (each is a connection to find)."""

    def __init__(self, client: Pod, server: Pod) -> None:
        self._client, self._server = client, server
        self._stop = threading.Event()
        self.summaries: list[ClientSummary] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.summaries.append(
                    self._client.run_client(
                        self._server.ip,
                        PORT,
                        count=CONNECTIONS_PER_BURST,
                        send_bytes=1000,
                        expect_reply_bytes=500,
                        interval_ms=BURST_INTERVAL_MS,
                    )
                )
        except BaseException as exc:  # the test reports it
            self.error = exc

    def ports(self) -> list[int]:
        assert self.error is None, f"the client failed: {self.error}"
        return [p for s in self.summaries for p in s.local_ports]

    def wait_for(self, connections: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while sum(s.completed for s in self.summaries) < connections:
            assert self.error is None, f"the client failed: {self.error}"
            assert time.monotonic() < deadline, f"fewer than {connections} connections made"
            time.sleep(0.2)


@dataclass
class Outcome:
    """What the topics hold for this test's pair once the pipeline stopped, and its logs."""

    enriched: list[EnrichedTcpConnection]
    metrics: list[TcpPairMetric]
    ports: list[int]  # client ports of the connections made
    logs: dict[str, str]
    health: CollectorHealth
    client: Pod
    server: Pod
    enricher_exits: list[tuple[int, str]]  # (exit code, last lines), each restarted
    processor_exits: list[tuple[int, str]]


def _run_fault(
    kafka: KafkaCluster,
    sim: Cluster,
    topics: Topics,
    tmp_path: Path,
    fault: Callable[[Traffic], None],
    *,
    idle_allowance_s: float = IDLE_ALLOWANCE_S,
    collector_args: tuple[str, ...] = (),
) -> Outcome:
    """The pipeline on the cluster, traffic throughout ``fault``; what the topics then hold."""
    bootstrap = kafka.bootstrap
    server = sim.add_pod("checkout", node="node-b1", namespace="shop")
    client = sim.add_pod("frontend", node="node-a1", namespace="shop")
    publish_metadata(bootstrap, topics, sim.write_objects(tmp_path / "objects.yaml"))
    settings = PipelineSettings(
        bootstrap=bootstrap,
        topics=topics,
        node_name="sim-host",
        log_dir=tmp_path / "logs",
        window_s=WINDOW_S,
        grace_s=GRACE_S,
        idle_allowance_s=idle_allowance_s,
        # Deliveries wait out a broker's restart rather than fail (acks=all, idempotent).
        collector_args=("--kafka-option", "message.timeout.ms=180000", *collector_args),
    )

    def ours_enriched(es: list[EnrichedTcpConnection]) -> list[EnrichedTcpConnection]:
        return [e for e in es if (e.client.address, e.server.address) == (client.ip, server.ip)]

    def ours_metrics(ms: list[TcpPairMetric]) -> list[TcpPairMetric]:
        return [m for m in ms if (m.client_workload, m.server_workload) == PAIR]

    with (
        running_pipeline(settings) as services,
        Restarter(services, settings, "enricher") as restarter,
        Restarter(services, settings, "processor") as processor_restarter,
    ):
        proc = server.start_server(PORT, reply_bytes=500)
        server.wait_listening(PORT, proc=proc)
        with Traffic(client, server) as traffic:
            fault(traffic)
        server.stop_server(proc)
        ports = traffic.ports()
        n = len(ports)
        enriched_reader = TopicReader(bootstrap, topics.enriched_tcp)
        metrics_reader = TopicReader(bootstrap, topics.metrics_tcp_pairs)
        try:
            enriched = ours_enriched(
                enriched_reader.read_until(
                    JsonCodec(EnrichedTcpConnection),
                    lambda es: len(ours_enriched(es)) >= 2 * n,
                    timeout_s=120,
                )
            )
            # What can be counted: the client ends that arrived (all of them but what the
            # collector counted as dropped), each once, as a consumer counts (first per id).
            client_ends = sum(1 for e in enriched if e.observer_role == "client")
            metrics = ours_metrics(
                metrics_reader.read_until(
                    JsonCodec(TcpPairMetric),
                    lambda ms: _counted(ours_metrics(ms)) >= client_ends,
                    timeout_s=WINDOW_S + GRACE_S + idle_allowance_s + 120,
                )
            )
            # Past the next window close: a record or window published twice shows here.
            time.sleep(WINDOW_S + GRACE_S + 1)
            codec = JsonCodec(TcpPairMetric)
            metrics += ours_metrics(
                [m for v in metrics_reader.read(2) for m in codec.decode_batch(v)]
            )
            e_codec = JsonCodec(EnrichedTcpConnection)
            enriched += ours_enriched(
                [e for v in enriched_reader.read(1) for e in e_codec.decode_batch(v)]
            )
        finally:
            enriched_reader.close()
            metrics_reader.close()
        for svc in services.values():
            svc.check_alive()
    return Outcome(
        enriched,
        metrics,
        ports,
        {name: svc.log_text() for name, svc in services.items()},
        _last_health(bootstrap, topics),
        client,
        server,
        restarter.exits,
        processor_restarter.exits,
    )


def _counted(metrics: list[TcpPairMetric]) -> int:
    """Connections counted by a consumer that keeps the first record per metric id."""
    return sum(m.connections for m in FirstPerId().keep(metrics))


def _last_health(bootstrap: str, topics: Topics) -> CollectorHealth:
    """The collector's last health record (written at its shutdown)."""
    reader = TopicReader(bootstrap, topics.collector_health)
    try:
        codec = JsonCodec(CollectorHealth)
        records = [codec.decode(v) for v in reader.read(5)]
    finally:
        reader.close()
    assert records, "no collector health record"
    return max(records, key=lambda h: h.time_ns)


def _assert_once(run: Outcome) -> None:
    assert not run.enricher_exits, run.enricher_exits
    assert not run.processor_exits, run.processor_exits
    enriched, metrics, ports = run.enriched, run.metrics, run.ports
    assert len(ports) == len(set(ports)), "a client port was reused: the check is ambiguous"
    got = sorted(e.client.port for e in enriched)
    want = sorted([*ports, *ports])
    missing = sorted(set(want) - set(got))
    assert got == want, f"not once per end: {len(got)} of {len(want)}, missing {missing[:10]}"
    assert sorted(e.observer_role for e in enriched) == sorted(
        ["client"] * len(ports) + ["server"] * len(ports)
    )
    assert sum(m.connections for m in metrics) == len(ports), metrics
    windows = [(m.window_start_ns, m.window_end_ns) for m in metrics]
    assert len(windows) == len(set(windows)), f"a window was published twice: {windows}"


def _final_counters(log: str, marker: str) -> dict[str, int]:
    """The ``k=v`` counters of a service's last line holding ``marker``."""
    line = next(line for line in reversed(log.splitlines()) if marker in line)
    pairs = (kv.split("=", 1) for kv in line.split(marker, 1)[1].split())
    return {k: int(v) for k, v in pairs if v.lstrip("-").isdigit()}


def test_coordinator_broker_killed_mid_stream_loses_and_repeats_nothing(
    kafka_cluster: KafkaCluster, sim: Cluster, topics: Topics, tmp_path: Path
) -> None:
    killed: dict[str, int] = {}

    def kill_coordinator(traffic: Traffic) -> None:
        traffic.wait_for(2 * CONNECTIONS_PER_BURST)
        bootstrap = kafka_cluster.bootstrap
        node = _leader(bootstrap, "__transaction_state")
        killed["node"] = node
        killed["group_coordinator"] = _leader(bootstrap, "__consumer_offsets")
        made = sum(s.completed for s in traffic.summaries)
        assert kafka_cluster.node(node).kill()
        # Connections made while it is down, then it comes back on its data.
        traffic.wait_for(made + 4 * CONNECTIONS_PER_BURST, timeout_s=90)
        kafka_cluster.node(node).restart()
        traffic.wait_for(made + 6 * CONNECTIONS_PER_BURST, timeout_s=90)

    run = _run_fault(kafka_cluster, sim, topics, tmp_path, kill_coordinator)
    _assert_once(run)
    enriched, metrics, ports, logs = run.enriched, run.metrics, run.ports, run.logs
    assert kafka_cluster.is_running()
    enricher = _final_counters(logs["enricher"], "final counters: ")
    # The coordinator's successor took the transactions over: none was fenced.
    assert enricher["enricher_transactions_committed_total"] > 0, enricher
    assert "fenced" not in logs["enricher"].lower()
    print(
        f"killed node {killed['node']} (transaction coordinator; group coordinator: node "
        f"{killed['group_coordinator']}): {len(ports)} connections, {len(enriched)} enriched "
        f"ends, {sum(m.connections for m in metrics)} counted in {len(metrics)} windows; "
        f"enricher transactions committed {enricher['enricher_transactions_committed_total']}, "
        f"aborted {enricher['enricher_transactions_aborted_total']}"
    )


def test_rolling_restart_under_load_loses_and_repeats_nothing(
    kafka_cluster: KafkaCluster, sim: Cluster, topics: Topics, tmp_path: Path
) -> None:
    def rolling_restart(traffic: Traffic) -> None:
        traffic.wait_for(2 * CONNECTIONS_PER_BURST)
        for node in kafka_cluster.nodes:
            made = sum(s.completed for s in traffic.summaries)
            assert node.stop()  # SIGTERM: a controlled shutdown moves its leaderships away
            traffic.wait_for(made + CONNECTIONS_PER_BURST, timeout_s=90)
            node.restart()
            _wait_in_sync(kafka_cluster.bootstrap, len(kafka_cluster.nodes))
        made = sum(s.completed for s in traffic.summaries)
        traffic.wait_for(made + 2 * CONNECTIONS_PER_BURST, timeout_s=90)

    run = _run_fault(kafka_cluster, sim, topics, tmp_path, rolling_restart)
    _assert_once(run)
    enriched, metrics, ports = run.enriched, run.metrics, run.ports
    print(
        f"rolling restart: {len(ports)} connections, {len(enriched)} enriched ends, "
        f"{sum(m.connections for m in metrics)} counted in {len(metrics)} windows"
    )


def test_cluster_unreachable_for_a_minute_drops_exactly_what_is_counted(
    kafka_cluster: KafkaCluster, sim: Cluster, topics: Topics, tmp_path: Path
) -> None:
    metrics_port = free_port_block(1)
    in_flight: list[int] = []

    def outage(traffic: Traffic) -> None:
        traffic.wait_for(2 * CONNECTIONS_PER_BURST)
        kafka_cluster.stop()  # every broker: nothing answers
        deadline = time.monotonic() + OUTAGE_S
        while time.monotonic() < deadline:
            time.sleep(5)
            _, values = scrape(metrics_port)
            in_flight.append(int(values["flowscope_collector_kafka_in_flight_messages"]))
        kafka_cluster.start()
        made = sum(s.completed for s in traffic.summaries)
        traffic.wait_for(made + 2 * CONNECTIONS_PER_BURST, timeout_s=90)

    run = _run_fault(
        kafka_cluster,
        sim,
        topics,
        tmp_path,
        outage,
        idle_allowance_s=OUTAGE_IDLE_ALLOWANCE_S,
        collector_args=(
            "--kafka-option",
            f"queue.buffering.max.messages={BUFFER_MESSAGES}",
            "--metrics-port",
            str(metrics_port),
            "--health-interval-seconds",
            "1",
        ),
    )
    ports, enriched, metrics = run.ports, run.enriched, run.metrics
    # An enricher that exited (fenced after the outage, or a librdkafka call that never
    # returned) said why in its last line; its restart resumed (the ends below arrived).
    for code, line in run.enricher_exits:
        assert code in (EXIT_FENCED, EXIT_HUNG), (code, line)
        assert line.splitlines()[-1].startswith("enricher: ") or "a restart resumes" in line
    # A worker whose metrics could not be delivered exits unacknowledged; one restarted
    # while the cluster is still away gives up its start after 30 s. Each says so.
    for code, line in run.processor_exits:
        causes = ("exiting without acknowledging", "no Kafka broker answered")
        assert code != 0 and any(c in line for c in causes), (code, line)
    # The memory bound held while nothing could be delivered (health records share it).
    assert in_flight and max(in_flight) <= BUFFER_MESSAGES, in_flight
    counters = run.health.counters
    assert counters["records_delivery_failed"] == 0, counters  # none timed out: all buffered
    assert counters["kernel_lost_ringbuf"] == 0, counters
    dropped = run.health.records_dropped_by_key
    assert sum(dropped.values()) == counters["records_dropped_buffer_full"] > 0, counters
    # Multisets: over a minute of connections a client port is drawn twice now and then.
    made = Counter(ports)
    arrived = {
        role: Counter(e.client.port for e in enriched if e.observer_role == role)
        for role in ("client", "server")
    }
    # What each pod's collector dropped is exactly what is missing downstream of it, and
    # nothing arrived twice.
    for role, pod in (("client", run.client), ("server", run.server)):
        assert not arrived[role] - made, f"{role} ends twice: {arrived[role] - made}"
        missing = (made - arrived[role]).total()
        assert missing == dropped.get(pod.uid, 0), (role, len(ports), missing, dropped)
    # A connection is counted on its client's record (server ends are skipped when the
    # client has a collector): every client end that arrived is counted exactly once by a
    # consumer that keeps the first record per metric id. The processors' restart re-reads
    # what they had not acknowledged and publishes those windows again under the same ids.
    client_ends = arrived["client"].total()
    kept = FirstPerId()
    counted = sum(m.connections for m in kept.keep(metrics))
    assert counted == client_ends, (counted, client_ends, metrics)
    windows = [(m.window_start_ns, m.window_end_ns) for m in FirstPerId().keep(metrics)]
    assert len(windows) == len(set(windows)), f"a window under two ids: {windows}"
    print(
        f"outage {OUTAGE_S:.0f}s: {len(ports)} connections, buffer bound {BUFFER_MESSAGES} "
        f"messages (max in flight {max(in_flight)}), dropped "
        f"{counters['records_dropped_buffer_full']} records (ours: "
        f"{dropped.get(run.client.uid, 0)} client, {dropped.get(run.server.uid, 0)} server "
        f"ends), {len(enriched)} enriched ends, {counted} of {client_ends} client ends "
        f"counted ({kept.duplicates} republished under their ids); enricher exits "
        f"{[c for c, _ in run.enricher_exits]}, processor exits "
        f"{[c for c, _ in run.processor_exits]} (each restarted)"
    )
