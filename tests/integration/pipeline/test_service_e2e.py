"""Pod-to-Service traffic through the whole pipeline, on layouts real clusters have.

Each case builds a cluster the way one kind of real node is laid out (pod wiring, kube-proxy
mode, cgroup driver, container runtime, IP family), connects a client pod to a Service's
ClusterIP N times for real, and reads the enriched and latency topics back: every client-side
record must name the backend pod, its workload, node and zone, the Service, and the zone pair;
the latency metric must carry the Service and count each connection once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from demo.readout import TopicReader
from demo.services import PipelineSettings, publish_metadata, running_pipeline
from flowscope.codec import JsonCodec
from flowscope.records import EnrichedTcpConnection, TcpLatencyMetric
from flowscope.topics import Topics
from simnode import Cluster, NodeSpec

N = 8
SEND, REPLY = 900, 4_000
PORT = 8080
WINDOW_S, GRACE_S = 3.0, 2.0
SERVICE_CIDRS = "10.96.0.0/16,fd00:10:96::/112"


@dataclass(frozen=True)
class Layout:
    wiring: str
    kube_proxy: str
    cgroup_driver: str
    runtime: str
    ipv6: bool

    def __str__(self) -> str:
        family = "ipv6" if self.ipv6 else "ipv4"
        return f"{self.wiring}-{self.kube_proxy}-{self.cgroup_driver}-{self.runtime}-{family}"


LAYOUTS = [
    Layout("bridge", "nftables", "cgroupfs", "containerd", ipv6=False),
    Layout("routed", "iptables", "systemd", "crio", ipv6=True),
    Layout("routed", "socket-lb", "systemd", "docker", ipv6=False),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_service_traffic_names_backend_and_service(
    root_required: None, kafka_bootstrap: str, topics: Topics, tmp_path: Path, layout: Layout
) -> None:
    nodes = [NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]
    with Cluster(
        nodes,
        pod_wiring=layout.wiring,
        kube_proxy=layout.kube_proxy,  # type: ignore[arg-type]
        cgroup_driver=layout.cgroup_driver,
        runtime=layout.runtime,  # type: ignore[arg-type]
        dual_stack=layout.ipv6,
    ) as cluster:
        server = cluster.add_pod("checkout", node="node-b1", namespace="shop")
        client = cluster.add_pod("frontend", node="node-a1", namespace="shop")
        svc = cluster.add_service(
            "checkout", namespace="shop", selector={"app": "checkout"}, port=80, target_port=PORT
        )
        if layout.kube_proxy == "socket-lb":
            host, port = cluster.backend_of(svc)  # the socket is the backend's from connect()
        else:
            host, port = (svc.cluster_ip6 if layout.ipv6 else svc.cluster_ip), 80
        assert host is not None
        publish_metadata(kafka_bootstrap, topics, cluster.write_objects(tmp_path / "objects.yaml"))
        settings = PipelineSettings(
            bootstrap=kafka_bootstrap,
            topics=topics,
            node_name="sim-host",
            log_dir=tmp_path / "logs",
            window_s=WINDOW_S,
            grace_s=GRACE_S,
            collector_args=("--service-cidrs", SERVICE_CIDRS),
        )
        enriched_reader = TopicReader(kafka_bootstrap, topics.enriched_tcp)
        latency_reader = TopicReader(kafka_bootstrap, topics.metrics_tcp_latency)
        try:
            with running_pipeline(settings):
                bind = "::" if layout.ipv6 else "0.0.0.0"
                proc = server.start_server(PORT, reply_bytes=REPLY, bind=bind)
                server.wait_listening(PORT, proc=proc)
                summary = client.run_client(
                    host, port, count=N, send_bytes=SEND, expect_reply_bytes=REPLY
                )
                server.stop_server(proc)
                assert summary.completed == N, summary
                ports = set(summary.local_ports)

                def mine(e: EnrichedTcpConnection) -> bool:
                    return e.client.pod_uid == client.uid and e.client.port in ports

                enriched = [
                    e
                    for e in enriched_reader.read_until(
                        JsonCodec(EnrichedTcpConnection),
                        lambda es: sum(map(mine, es)) >= 2 * N,
                        timeout_s=60,
                    )
                    if mine(e)
                ]
                wl = ("shop/Deployment/frontend", "shop/Deployment/checkout")
                latency = [
                    m
                    for m in latency_reader.read_until(
                        JsonCodec(TcpLatencyMetric),
                        lambda ms: (
                            sum(
                                m.connections
                                for m in ms
                                if (m.client_workload, m.server_workload) == wl
                            )
                            >= N
                        ),
                        timeout_s=WINDOW_S + GRACE_S + 60,
                    )
                    if (m.client_workload, m.server_workload) == wl
                ]
                # Past the next window close a double count would show.
                latency += [
                    m
                    for m in (
                        JsonCodec(TcpLatencyMetric).decode(v)
                        for v in latency_reader.read(WINDOW_S + GRACE_S + 1)
                    )
                    if (m.client_workload, m.server_workload) == wl
                ]
        finally:
            enriched_reader.close()
            latency_reader.close()

    server_ip = server.ip6 if layout.ipv6 else server.ip
    assert len(enriched) == 2 * N  # each connection seen from both ends, once each
    assert sorted(e.observer_role for e in enriched) == ["client"] * N + ["server"] * N
    for e in enriched:
        assert (e.server.address, e.server.port) == (server_ip, PORT), e
        assert (e.server.pod_uid, e.server.deployment, e.server.service) == (
            server.uid,
            "checkout",
            "checkout",
        ), e
        assert (e.server.node, e.server.zone, e.client.zone) == ("node-b1", "zone-b", "zone-a")
        assert e.peer_class == "cross_zone", e
        assert (e.bytes_client_to_server, e.bytes_server_to_client) == (SEND, REPLY), e
        assert e.network_type == ("ipv6" if layout.ipv6 else "ipv4")
        # The observing end is named by its cgroup, container included.
        local = e.client if e.observer_role == "client" else e.server
        assert local.container_id == (client if local is e.client else server).container_id, e
    assert sum(m.connections for m in latency) == N, latency
    assert {m.service for m in latency} == {"checkout"}
    assert sum(m.failed_connections for m in latency) == 0
