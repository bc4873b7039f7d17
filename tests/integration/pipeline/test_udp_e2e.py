"""UDP through the whole pipeline: pods exchange datagrams for real (through a Service's
ClusterIP, over IPv4 and IPv6), the collector sums them in the kernel, the enricher names
both ends and the backend behind the Service, and the processors charge the bytes to the
zone pair. The enriched topic and the UDP cost pairs are read to their end and checked
against what the test sent: every byte once, none twice although both ends report.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from demo.readout import TopicReader
from demo.services import PipelineSettings, publish_metadata, running_pipeline
from flowscope.codec import JsonCodec
from flowscope.records import CostPairMetric, EnrichedUdpFlow
from flowscope.topics import Topics
from processors.core.dedupe import FirstPerId
from simnode import Cluster, NodeSpec

PORT = 5004
COUNT, SIZE, REPLIES, REPLY_SIZE = 40, 300, 6, 1000
WINDOW_S, GRACE_S = 3.0, 2.0

ECHO = r"""
import socket, sys
family = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
port, replies, size, expect = (int(a) for a in sys.argv[2:6])
s = socket.socket(family, socket.SOCK_DGRAM)
s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
print("ready", flush=True)
got = 0
while got < expect:
    data, peer = s.recvfrom(65536)
    got += 1
for _ in range(replies):
    s.sendto(b"r" * size, peer)
print(got, flush=True)
"""

SEND = r"""
import json, socket, sys, time
family = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
host = sys.argv[2]
port, count, size, replies = (int(a) for a in sys.argv[3:7])
s = socket.socket(family, socket.SOCK_DGRAM)
for _ in range(count):
    s.sendto(b"c" * size, (host, port))
    time.sleep(0.002)
s.settimeout(5)
got = 0
while got < replies:
    s.recvfrom(65536)
    got += 1
print(json.dumps({"port": s.getsockname()[1], "received": got}))
"""


@dataclass(frozen=True)
class Layout:
    wiring: str
    kube_proxy: str
    ipv6: bool

    def __str__(self) -> str:
        return f"{self.wiring}-{self.kube_proxy}-{'ipv6' if self.ipv6 else 'ipv4'}"


LAYOUTS = [Layout("bridge", "nftables", ipv6=False), Layout("routed", "iptables", ipv6=True)]


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_udp_through_a_service_is_named_and_charged_once(
    root_required: None, kafka_bootstrap: str, topics: Topics, tmp_path: Path, layout: Layout
) -> None:
    nodes = [NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]
    with Cluster(
        nodes,
        pod_wiring=layout.wiring,
        kube_proxy=layout.kube_proxy,  # type: ignore[arg-type]
        dual_stack=layout.ipv6,
    ) as cluster:
        server = cluster.add_pod("streamer", node="node-b1", namespace="media")
        client = cluster.add_pod("player", node="node-a1", namespace="media")
        svc = cluster.add_service(
            "stream", namespace="media", selector={"app": "streamer"}, port=PORT, protocols=("UDP",)
        )
        host = svc.cluster_ip6 if layout.ipv6 else svc.cluster_ip
        assert host is not None
        family = "6" if layout.ipv6 else "4"
        publish_metadata(kafka_bootstrap, topics, cluster.write_objects(tmp_path / "objects.yaml"))
        settings = PipelineSettings(
            bootstrap=kafka_bootstrap,
            topics=topics,
            node_name="sim-host",
            log_dir=tmp_path / "logs",
            window_s=WINDOW_S,
            grace_s=GRACE_S,
            collector_args=(
                "--service-cidrs",
                "10.96.0.0/16,fd00:10:96::/112",
                "--udp-interval-seconds",
                "1",
            ),
        )
        flows_reader = TopicReader(kafka_bootstrap, topics.enriched_udp)
        cost_reader = TopicReader(kafka_bootstrap, topics.metrics_cost_pairs)
        try:
            with running_pipeline(settings):
                echo = server.start(
                    [
                        sys.executable,
                        "-c",
                        ECHO,
                        family,
                        str(PORT),
                        str(REPLIES),
                        str(REPLY_SIZE),
                        str(COUNT),
                    ]
                )
                assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
                sent = client.run(
                    [
                        sys.executable,
                        "-c",
                        SEND,
                        family,
                        host,
                        str(PORT),
                        str(COUNT),
                        str(SIZE),
                        str(REPLIES),
                    ]
                )
                client_port = json.loads(sent.stdout)["port"]
                echo_out, _ = echo.communicate(timeout=10)
                assert int(echo_out.strip().splitlines()[-1]) == COUNT
                header = (40 if layout.ipv6 else 20) + 8
                up, down = COUNT * (SIZE + header), REPLIES * (REPLY_SIZE + header)

                def mine(f: EnrichedUdpFlow) -> bool:
                    return f.client.pod_uid == client.uid and f.client.port == client_port

                def complete(fs: list[EnrichedUdpFlow]) -> bool:
                    sides = [f for f in fs if mine(f)]
                    return (
                        {f.observer_role for f in sides} == {"client", "server"}
                        and sum(
                            f.bytes_client_to_server for f in sides if f.observer_role == "client"
                        )
                        >= up
                        and sum(
                            f.bytes_server_to_client for f in sides if f.observer_role == "server"
                        )
                        >= down
                    )

                flows = [
                    f
                    for f in flows_reader.read_until(
                        JsonCodec(EnrichedUdpFlow), complete, timeout_s=60
                    )
                    if mine(f)
                ]
                pair = ("media/Deployment/player", "media/Deployment/streamer")
                dedupe = FirstPerId()
                codec = JsonCodec(CostPairMetric)

                def ours(values: list[bytes]) -> list[CostPairMetric]:
                    ms = dedupe.keep(codec.decode(v) for v in values)
                    return [
                        m
                        for m in ms
                        if m.transport == "udp"
                        and (m.source_workload, m.destination_workload) == pair
                    ]

                cost = ours(cost_reader.read(WINDOW_S + GRACE_S + 5))
                while sum(m.bytes_source_to_destination for m in cost) < up:
                    more = ours(cost_reader.read(5.0))
                    if not more:
                        break
                    cost += more
                # Past the next window close a double count would show.
                cost += ours(cost_reader.read(WINDOW_S + GRACE_S + 1))
        finally:
            flows_reader.close()
            cost_reader.close()

    server_ip = server.ip6 if layout.ipv6 else server.ip
    for f in flows:
        assert (f.server.pod_uid, f.server.service, f.server.address, f.server.port) == (
            server.uid,
            "stream",
            server_ip,
            PORT,
        ), f
        assert (f.client.zone, f.server.zone, f.peer_class) == ("zone-a", "zone-b", "cross_zone")
        assert f.network_type == ("ipv6" if layout.ipv6 else "ipv4")
    by_side = {role: [f for f in flows if f.observer_role == role] for role in ("client", "server")}
    for role, side in by_side.items():
        assert sum(f.bytes_client_to_server for f in side) == up, (role, side)
        assert sum(f.bytes_server_to_client for f in side) == down, (role, side)
        assert sum(f.packets_client_to_server for f in side) == COUNT, (role, side)
        assert sum(f.packets_server_to_client for f in side) == REPLIES, (role, side)
    # Counted once, from the client's side, though both ends reported it.
    assert sum(m.bytes_source_to_destination for m in cost) == up, cost
    assert sum(m.bytes_destination_to_source for m in cost) == down, cost
    assert {(m.source_zone, m.destination_zone, m.cost_class) for m in cost} == {
        ("zone-a", "zone-b", "cross_zone")
    }
    # The shipped price table: $0.01/GB sent and received across zones, paid by both ends.
    assert sum(m.cost_usd for m in cost) == pytest.approx(2 * (up + down) * 0.01 / 1e9, abs=4e-9)
