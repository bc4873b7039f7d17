"""The spine, end to end: real sockets in pod namespaces -> BPF -> collector -> Kafka ->
enricher -> Faust processor -> metrics topic. Every figure is checked against what the test
itself did (the client's own summary), record by record on the raw and enriched topics."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_accuracy import AccuracyCheck

from demo.readout import TopicReader
from demo.services import PipelineSettings, publish_metadata, running_pipeline
from flowscope.codec import JsonCodec
from flowscope.records import EnrichedTcpConnection, RawTcpConnection, TcpPairMetric
from flowscope.topics import Topics
from simnode import Cluster, NodeSpec, Pod

N_CONNECTIONS = 12
SEND_BYTES = 7_000  # client -> server, per connection
REPLY_BYTES = 3_000  # server -> client
PORT = 8080
WINDOW_S = 3.0
GRACE_S = 2.0


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    nodes = [NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]
    with Cluster(nodes) as c:
        yield c


def _ours(record: RawTcpConnection, client: Pod, server: Pod) -> bool:
    pair = {(client.ip, server.ip), (server.ip, client.ip)}
    return (record.local_addr, record.remote_addr) in pair and PORT in (
        record.local_port,
        record.remote_port,
    )


def test_connections_flow_from_kernel_to_pair_metrics(
    root_required: None, kafka_bootstrap: str, topics: Topics, cluster: Cluster, tmp_path: Path
) -> None:
    server = cluster.add_pod("checkout", node="node-b1", namespace="shop")
    client = cluster.add_pod("frontend", node="node-a1", namespace="shop")
    publish_metadata(kafka_bootstrap, topics, cluster.write_objects(tmp_path / "objects.yaml"))

    settings = PipelineSettings(
        bootstrap=kafka_bootstrap,
        topics=topics,
        node_name="sim-host",
        log_dir=tmp_path / "logs",
        window_s=WINDOW_S,
        grace_s=GRACE_S,
    )
    raw_reader = TopicReader(kafka_bootstrap, topics.raw_tcp)
    enriched_reader = TopicReader(kafka_bootstrap, topics.enriched_tcp)
    metrics_reader = TopicReader(kafka_bootstrap, topics.metrics_tcp_pairs)
    try:
        with running_pipeline(settings) as services:
            proc = server.start_server(PORT, reply_bytes=REPLY_BYTES)
            server.wait_listening(PORT, proc=proc)
            summary = client.run_client(
                server.ip,
                PORT,
                count=N_CONNECTIONS,
                send_bytes=SEND_BYTES,
                expect_reply_bytes=REPLY_BYTES,
            )
            server.stop_server(proc)
            assert summary.completed == N_CONNECTIONS, summary
            ports = set(summary.local_ports)
            assert len(ports) == N_CONNECTIONS

            raw = [
                r
                for r in raw_reader.read_until(
                    JsonCodec(RawTcpConnection),
                    lambda rs: sum(_ours(r, client, server) for r in rs) >= 2 * N_CONNECTIONS,
                    timeout_s=60,
                )
                if _ours(r, client, server)
            ]
            _check_raw(raw, client, server, ports)

            enriched = [
                e
                for e in enriched_reader.read_until(
                    JsonCodec(EnrichedTcpConnection),
                    lambda es: (
                        sum(
                            e.client.address == client.ip and e.server.address == server.ip
                            for e in es
                        )
                        >= 2 * N_CONNECTIONS
                    ),
                    timeout_s=60,
                )
                if e.client.address == client.ip and e.server.address == server.ip
            ]
            _check_enriched(enriched, client, server, ports)

            client_wl, server_wl = "shop/Deployment/frontend", "shop/Deployment/checkout"

            def ours(ms: list[TcpPairMetric]) -> list[TcpPairMetric]:
                return [
                    m
                    for m in ms
                    if m.client_workload == client_wl and m.server_workload == server_wl
                ]

            metrics = ours(
                metrics_reader.read_until(
                    JsonCodec(TcpPairMetric),
                    lambda ms: sum(m.connections for m in ours(ms)) >= N_CONNECTIONS,
                    timeout_s=WINDOW_S + GRACE_S + 60,
                )
            )
            # Keep reading past the next window close: a double count would show up here.
            time.sleep(WINDOW_S + GRACE_S + 1)
            metrics += ours([JsonCodec(TcpPairMetric).decode(v) for v in metrics_reader.read(2)])
            for svc in services.values():
                svc.check_alive()
    finally:
        for reader in (raw_reader, enriched_reader, metrics_reader):
            reader.close()

    assert sum(m.connections for m in metrics) == N_CONNECTIONS, metrics
    assert sum(m.bytes_client_to_server for m in metrics) == N_CONNECTIONS * SEND_BYTES
    assert sum(m.bytes_server_to_client for m in metrics) == N_CONNECTIONS * REPLY_BYTES
    windows = [(m.window_start_ns, m.window_end_ns) for m in metrics]
    assert len(windows) == len(set(windows)), f"a window was published twice: {windows}"
    for m in metrics:
        assert m.client_zones == ["zone-a"] and m.server_zones == ["zone-b"], m
        assert m.peer_classes == ["cross_zone"], m
        assert m.connect_latency_p50_us is not None and m.connect_latency_p50_us > 0, m
        assert m.connect_latency_p99_us is not None
        assert m.connect_latency_p99_us >= m.connect_latency_p50_us
        assert m.window_end_ns - m.window_start_ns == int(WINDOW_S * 1e9)
    # The published connect latency percentiles against the exact ones from the raw client
    # records of the same window (event time = end time; the enricher keeps it as it is).
    accuracy = AccuracyCheck()
    for m in metrics:
        latencies = [
            r.connect_latency_us
            for r in raw
            if r.role == "client"
            and r.sequence == 0
            and r.connect_latency_us is not None
            and m.window_start_ns <= r.end_time_ns < m.window_end_ns
        ]
        accuracy.check(
            f"window {m.window_start_ns}",
            latencies,
            {0.5: m.connect_latency_p50_us, 0.99: m.connect_latency_p99_us},
            m.connect_latency_sketch,
        )
    assert accuracy.records == N_CONNECTIONS, accuracy.summary()
    print(accuracy.summary())


def _check_raw(raw: list[RawTcpConnection], client: Pod, server: Pod, ports: set[int]) -> None:
    clients = {r.local_port: r for r in raw if r.role == "client"}
    servers = {r.remote_port: r for r in raw if r.role == "server"}
    assert set(clients) == ports, f"client-side records: {sorted(clients)} != {sorted(ports)}"
    assert set(servers) == ports, f"server-side records: {sorted(servers)} != {sorted(ports)}"
    assert len(raw) == 2 * N_CONNECTIONS, "a connection end was reported more than once"
    for r in clients.values():
        assert (r.local_addr, r.remote_addr, r.remote_port) == (client.ip, server.ip, PORT)
        assert (r.bytes_sent, r.bytes_received) == (SEND_BYTES, REPLY_BYTES), r
        assert (r.pod_uid, r.container_id) == (client.uid, client.container_id), r
        assert r.connect_latency_us is not None and r.connect_latency_us > 0, r
        assert r.family == 4 and r.comm.startswith("python"), r
        assert 0 < r.start_time_ns <= r.end_time_ns, r
    for r in servers.values():
        assert (r.local_addr, r.local_port, r.remote_addr) == (server.ip, PORT, client.ip)
        assert (r.bytes_sent, r.bytes_received) == (REPLY_BYTES, SEND_BYTES), r
        assert (r.pod_uid, r.container_id) == (server.uid, server.container_id), r
        assert r.connect_latency_us is None, r
    # Both ends of one connection carry the same 4-tuple, so consumers can pair them.
    for port in ports:
        c, s = clients[port], servers[port]
        assert (c.local_addr, c.local_port, c.remote_addr, c.remote_port) == (
            s.remote_addr,
            s.remote_port,
            s.local_addr,
            s.local_port,
        )


def _check_enriched(
    enriched: list[EnrichedTcpConnection], client: Pod, server: Pod, ports: set[int]
) -> None:
    assert len(enriched) == 2 * N_CONNECTIONS
    assert {e.client.port for e in enriched} == ports
    assert sorted(e.observer_role for e in enriched) == sorted(
        ["client"] * N_CONNECTIONS + ["server"] * N_CONNECTIONS
    )
    for e in enriched:
        assert e.client_observed, e
        assert e.network_type == "ipv4" and e.transport == "tcp"
        assert e.peer_class == "cross_zone", e
        assert (e.bytes_client_to_server, e.bytes_server_to_client) == (SEND_BYTES, REPLY_BYTES)
        for end, pod, deployment in (
            (e.client, client, "frontend"),
            (e.server, server, "checkout"),
        ):
            assert end.attribution == "pod", e
            assert (end.pod_name, end.pod_uid, end.namespace) == (pod.name, pod.uid, "shop"), e
            assert (end.deployment, end.workload_kind, end.workload_name) == (
                deployment,
                "Deployment",
                deployment,
            ), e
            assert (end.node, end.zone) == (pod.node, pod.zone), e
