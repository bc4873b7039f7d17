"""Is the network at fault? End to end on the simulated node: real connections between pods
on three nodes, the whole pipeline (collector with the drop counter, enricher, processors).

- nftables drops a share of the packets between node-a1's and node-b1's pods only: the path
  health metrics show retransmissions on node-a1 -> node-b1 and not on node-a1 -> node-c1,
  the kernel's drop records say NETFILTER_DROP for those addresses, and the verdict fires
  "network path node-a1 -> node-b1 degraded" naming both service pairs on it, then resolves
  once the rule is gone.
- one server that resets every connection gives the service alert for that server, and no
  network alert, although it shares its path with a healthy service.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.readout import TopicReader
from demo.services import PipelineSettings, publish_metadata, running_pipeline
from flowscope.codec import JsonCodec
from flowscope.records import AlertEvent, PathHealthMetric, RawPacketDrops
from flowscope.topics import Topics
from processors.path.verdict import NETWORK_RULE, SERVICE_RULE
from simnode import Cluster, NodeSpec, Pod
from simnode.impair import path_loss

PORT = 8080
WINDOW_S = 3.0
GRACE_S = 1.0
LOSS_PERCENT = 10
NS = "shop"
VERDICT = """
rules: []
network_verdict:
  scopes: [node]
  min_connections: 4
  retransmission_rate: 0.02
  failure_rate: 0.2
  syn_retransmit_rate: 0.5
  baseline_windows: 2
  min_pairs: 2
  min_servers: 2
  service_for_windows: 2
  clear_windows: 2
"""

# Accepts, reads the request, and aborts with a RST: a broken server, the network fine.
RESETTER = r"""
import socket, struct, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(128)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.recv(1024)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
"""


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    nodes = [
        NodeSpec("node-a1", zone="zone-a"),
        NodeSpec("node-b1", zone="zone-b"),
        NodeSpec("node-c1", zone="zone-c"),
    ]
    with Cluster(nodes) as c:
        yield c


def w(name: str) -> str:
    return f"{NS}/Deployment/{name}"


class Load:
    """Clients connecting to their servers in a loop until stopped (failures allowed)."""

    def __init__(self, pairs: list[tuple[Pod, Pod]]) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=p, daemon=True) for p in pairs]

    def _loop(self, client: Pod, server: Pod) -> None:
        while not self._stop.is_set():
            client.run(
                client.python(
                    "simnode.traffic",
                    "client",
                    "--host",
                    server.ip,
                    "--port",
                    str(PORT),
                    "--count",
                    "4",
                    "--send-bytes",
                    "30000",
                    "--interval-ms",
                    "20",
                    "--timeout-s",
                    "5",
                ),
                timeout_s=60,
                check=False,
            )

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90)


def _pipeline(kafka: str, topics: Topics, tmp_path: Path) -> PipelineSettings:
    rules = tmp_path / "alerts.yaml"
    rules.write_text(VERDICT)
    return PipelineSettings(
        bootstrap=kafka,
        topics=topics,
        node_name="sim-host",
        log_dir=tmp_path / "logs",
        window_s=WINDOW_S,
        grace_s=GRACE_S,
        collector_args=("--drops-interval-seconds", "2"),
        processor_args=("--alert-rules", str(rules)),
    )


def _alerts_until(reader: TopicReader, done: object, timeout_s: float) -> list[AlertEvent]:
    assert callable(done)
    return reader.read_until(JsonCodec(AlertEvent), done, timeout_s=timeout_s)


def test_loss_on_one_path_is_the_network_and_resolves(
    root_required: None, kafka_bootstrap: str, topics: Topics, cluster: Cluster, tmp_path: Path
) -> None:
    checkout = cluster.add_pod("checkout", node="node-b1", namespace=NS)
    stock = cluster.add_pod("stock", node="node-b1", namespace=NS)
    search = cluster.add_pod("search", node="node-c1", namespace=NS)
    frontend = cluster.add_pod("frontend", node="node-a1", namespace=NS)
    cart = cluster.add_pod("cart", node="node-a1", namespace=NS)
    publish_metadata(kafka_bootstrap, topics, cluster.write_objects(tmp_path / "objects.yaml"))
    alerts = TopicReader(kafka_bootstrap, topics.alerts)
    health = TopicReader(kafka_bootstrap, topics.metrics_path_health)
    drops = TopicReader(kafka_bootstrap, topics.raw_drops)
    pairs = [(frontend, checkout), (cart, stock), (frontend, search)]
    with running_pipeline(_pipeline(kafka_bootstrap, topics, tmp_path)):
        for server in (checkout, stock, search):
            proc = server.start_server(PORT, reply_bytes=2000)
            server.wait_listening(PORT, proc=proc)
        with Load(pairs):
            time.sleep(3 * WINDOW_S)  # healthy windows first
            loss_start_ns = time.time_ns()
            with path_loss(
                cluster.run_id, [frontend.ip, cart.ip], [checkout.ip, stock.ip], LOSS_PERCENT
            ):
                time.sleep(4 * WINDOW_S)
            loss_end_ns = time.time_ns()
            time.sleep(4 * WINDOW_S)  # healthy again
        events = _alerts_until(
            alerts,
            lambda es: any(e.rule == NETWORK_RULE and e.status == "resolved" for e in es),
            90,
        )
        metrics = health.read_until(
            JsonCodec(PathHealthMetric),
            lambda ms: any(m.window_start_ns >= loss_end_ns for m in ms),
            30,
        )
        dropped = drops.read_until(
            JsonCodec(RawPacketDrops),
            lambda ds: any(d.window_start_ns >= loss_end_ns for d in ds),
            30,
        )

    # The verdict: the network, on that path, both services on it; nothing else.
    network = [e for e in events if e.rule == NETWORK_RULE]
    assert [e.status for e in network] == ["firing", "resolved"], events
    fired = network[0]
    assert fired.group == {"scope": "node", "source": "node-a1", "destination": "node-b1"}
    assert fired.evidence[0]["summary"] == "network path node-a1 -> node-b1 degraded"
    assert fired.evidence[0]["services"] == [
        f"{w('cart')} -> {w('stock')}",
        f"{w('frontend')} -> {w('checkout')}",
    ]
    assert fired.evidence[0]["healthy_paths"] == ["node-a1 -> node-c1"]
    assert w("search") not in fired.affected_workloads
    assert loss_start_ns - WINDOW_S * 1e9 <= fired.window_start_ns <= loss_end_ns
    assert network[1].alert_id == fired.alert_id
    # No service is blamed, not even where a pair fell below min_connections in a window.
    blamed = [(e.status, e.window_start_ns, e.evidence) for e in events if e.rule == SERVICE_RULE]
    assert blamed == [], (blamed, network, loss_start_ns, loss_end_ns)

    # The health metrics: retransmissions on that path only.
    def rate(source: str, destination: str, lossy: bool) -> float:
        ms = [
            m
            for m in metrics
            if m.scope == "node"
            and (m.source, m.destination) == (source, destination)
            and (loss_start_ns <= m.window_start_ns < loss_end_ns - WINDOW_S * 1e9) == lossy
        ]
        assert ms, (source, destination, lossy)
        return sum(m.retrans_segs for m in ms) / sum(m.segs_out for m in ms)

    assert rate("node-a1", "node-b1", lossy=True) > 0.02
    assert rate("node-a1", "node-c1", lossy=True) < 0.005
    zone = [m for m in metrics if m.scope == "zone" and m.source == "zone-a"]
    assert {m.destination for m in zone} == {"zone-b", "zone-c"}

    # The kernel's reason: the rule's drops, on the node, for those addresses only.
    path_ips = {frontend.ip, cart.ip, checkout.ip, stock.ip}
    netfilter = [d for d in dropped if d.reason == "NETFILTER_DROP"]
    ours = [d for d in netfilter if {d.src_addr, d.dst_addr} <= path_ips]
    assert sum(d.packets for d in ours) > 0
    assert all(d.node_netns and d.cgroup_id == 0 and d.ip_proto == 6 for d in ours)
    assert not [d for d in netfilter if search.ip in (d.src_addr, d.dst_addr)]


def test_one_server_resetting_is_the_service_not_the_network(
    root_required: None, kafka_bootstrap: str, topics: Topics, cluster: Cluster, tmp_path: Path
) -> None:
    checkout = cluster.add_pod("checkout", node="node-b1", namespace=NS)
    flaky = cluster.add_pod("flaky", node="node-b1", namespace=NS)
    search = cluster.add_pod("search", node="node-c1", namespace=NS)
    frontend = cluster.add_pod("frontend", node="node-a1", namespace=NS)
    cart = cluster.add_pod("cart", node="node-a1", namespace=NS)
    publish_metadata(kafka_bootstrap, topics, cluster.write_objects(tmp_path / "objects.yaml"))
    alerts = TopicReader(kafka_bootstrap, topics.alerts)
    with running_pipeline(_pipeline(kafka_bootstrap, topics, tmp_path)):
        for server in (checkout, search):
            proc = server.start_server(PORT, reply_bytes=2000)
            server.wait_listening(PORT, proc=proc)
        resetter = flaky.start([sys.executable, "-c", RESETTER, str(PORT)])
        flaky.wait_listening(PORT, proc=resetter)
        with Load([(frontend, checkout), (cart, flaky), (frontend, search)]):
            time.sleep(4 * WINDOW_S)
        events = _alerts_until(
            alerts,
            lambda es: any(e.rule == SERVICE_RULE and e.status == "resolved" for e in es),
            60,
        )

    service = [e for e in events if e.rule == SERVICE_RULE]
    assert [e.status for e in service] == ["firing", "resolved"], events
    assert service[0].group == {"server_workload": w("flaky")}
    assert service[0].affected_workloads == [w("cart"), w("flaky")]
    assert service[0].evidence[0]["summary"] == f"service {w('flaky')} degraded"
    assert [e for e in events if e.rule == NETWORK_RULE] == []
