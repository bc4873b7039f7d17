"""Is the network at fault? End to end on the simulated node: real connections between pods
on several nodes, the whole pipeline (collector with the drop counter, enricher, processors).

- nftables drops a share of the packets between node-a1's and node-b1's pods only: the path
  health metrics show retransmissions and the kernel's NETFILTER_DROP drops on
  node-a1 -> node-b1 and not on node-a1 -> node-c1, and the verdict fires "network path
  node-a1 -> node-b1 degraded" naming both service pairs on it, then resolves once the rule
  is gone.
- the same across a zone: zone-a's pods lose packets to zone-b's two nodes, one service on
  each, so no node path has two degraded pairs; with drops the only signal the verdict may
  use, it fires "network path zone-a -> zone-b degraded" listing both services.
- one server that resets every connection gives the service alert for that server, and no
  network alert, although it shares its path with a healthy service.

Nothing here depends on how fast the machine is: the load is a long-lived client per pair,
each phase lasts until the topics show what it waits for (bounded by a generous timeout),
not for a fixed number of seconds, and repeated messages are dropped by their ids.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
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
DROPS_INTERVAL_S = 2.0
# Path windows wait for the drop windows (reported one interval after they end), with room.
PATH_GRACE_S = 4 * DROPS_INTERVAL_S
LOSS_PERCENT = 10
NS = "shop"
PHASE_TIMEOUT_S = 240.0  # a bound on each phase, not an expectation
MIN_CONNECTIONS = 4
VERDICT = f"""
rules: []
network_verdict:
  scopes: [node]
  min_connections: {MIN_CONNECTIONS}
  retransmission_rate: 0.02
  failure_rate: 0.2
  syn_retransmit_rate: 0.5
  baseline_windows: 2
  min_pairs: 2
  min_servers: 2
  service_for_windows: 2
  clear_windows: 2
"""
# Drops are the only signal that can breach: whatever fires, drops made it fire.
DROPS_ONLY_VERDICT = f"""
rules: []
network_verdict:
  scopes: [node, zone]
  min_connections: {MIN_CONNECTIONS}
  retransmission_rate: 1.0
  failure_rate: 1.0
  syn_retransmit_rate: 1.0
  rtt_ratio: 1000000
  drop_rate: 0.01
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
        NodeSpec("node-b2", zone="zone-b"),
        NodeSpec("node-c1", zone="zone-c"),
    ]
    with Cluster(nodes) as c:
        yield c


def w(name: str) -> str:
    return f"{NS}/Deployment/{name}"


class Load:
    """One long-lived client per pair, connecting to its server every 50 ms until stopped
    (failed connections counted by the client, which goes on). One process per pair, not one
    per few connections: how many connections a window holds must not hang on how fast a
    loaded machine starts Python."""

    def __init__(self, pairs: list[tuple[Pod, Pod]]) -> None:
        self._pairs = pairs
        self._procs: list[subprocess.Popen[str]] = []

    def __enter__(self) -> Load:
        for client, server in self._pairs:
            argv = client.python(
                "simnode.traffic",
                "client",
                "--host",
                server.ip,
                "--port",
                str(PORT),
                "--count",
                "1000000",
                "--send-bytes",
                "30000",
                "--interval-ms",
                "50",
                "--timeout-s",
                "5",
            )
            self._procs.append(
                client.start(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        return self

    def __exit__(self, *_exc: object) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            proc.wait(30)


class Seen:
    """What the alerts, path health and drops topics said so far; phases read on until what
    they wait for is there."""

    def __init__(self, kafka: str, topics: Topics) -> None:
        self.alerts: list[AlertEvent] = []
        self.health: list[PathHealthMetric] = []
        self.drops: list[RawPacketDrops] = []
        self._readers: list[tuple[TopicReader, JsonCodec[Any], list[Any]]] = [
            (TopicReader(kafka, topics.alerts), JsonCodec(AlertEvent), self.alerts),
            (
                TopicReader(kafka, topics.metrics_path_health),
                JsonCodec(PathHealthMetric),
                self.health,
            ),
            (TopicReader(kafka, topics.raw_drops), JsonCodec(RawPacketDrops), self.drops),
        ]

    def until(self, done: Callable[[Seen], bool], what: str) -> None:
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while not done(self):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {what} within {PHASE_TIMEOUT_S:.0f} s: alerts "
                    f"{[(e.rule, e.status, e.group) for e in self.alerts]}, "
                    f"{len(self.health)} path metrics"
                )
            for reader, codec, into in self._readers:
                for value in reader.read(0.3):
                    into.extend(codec.decode_batch(value))
            # At least once on the wire (a retried send, a window published again after a
            # rebalance): consumers drop repeats by their deterministic ids, and so do we.
            self.alerts[:] = list({(e.alert_id, e.status): e for e in self.alerts}.values())
            self.health[:] = list({m.metric_id: m for m in self.health}.values())

    def windows(self, scope: str, source: str, destination: str) -> dict[int, PathHealthMetric]:
        """One path's metrics per window start (a window's partitions summed)."""
        by: dict[int, list[PathHealthMetric]] = {}
        for m in self.health:
            if (m.scope, m.source, m.destination) == (scope, source, destination):
                by.setdefault(m.window_start_ns, []).append(m)
        return {start: _summed(ms) for start, ms in sorted(by.items())}

    def events(self, rule: str) -> list[AlertEvent]:
        return [e for e in self.alerts if e.rule == rule]


def _summed(ms: list[PathHealthMetric]) -> PathHealthMetric:
    drops: dict[str, int] = {}
    for m in ms:
        for reason, n in m.drops.items():
            drops[reason] = drops.get(reason, 0) + n
    return msgspec.structs.replace(
        ms[0],
        connections=sum(m.connections for m in ms),
        retrans_segs=sum(m.retrans_segs for m in ms),
        segs_out=sum(m.segs_out for m in ms),
        dropped_packets=sum(m.dropped_packets for m in ms),
        drops=drops,
        services=sorted({s for m in ms for s in m.services}),
    )


def _pipeline(kafka: str, topics: Topics, tmp_path: Path, verdict: str) -> PipelineSettings:
    rules = tmp_path / "alerts.yaml"
    rules.write_text(verdict)
    return PipelineSettings(
        bootstrap=kafka,
        topics=topics,
        node_name="sim-host",
        log_dir=tmp_path / "logs",
        window_s=WINDOW_S,
        grace_s=GRACE_S,
        collector_args=("--drops-interval-seconds", str(DROPS_INTERVAL_S)),
        processor_args=("--alert-rules", str(rules), "--path-grace-seconds", str(PATH_GRACE_S)),
    )


def _busy(seen: Seen, paths: list[tuple[str, str, str]], count: int) -> bool:
    """Each path has had ``count`` windows with enough connections to judge two pairs."""
    return all(
        sum(m.connections >= 2 * MIN_CONNECTIONS for m in seen.windows(*p).values()) >= count
        for p in paths
    )


def _within(m: PathHealthMetric, start_ns: int, end_ns: int) -> bool:
    return start_ns <= m.window_start_ns and m.window_end_ns <= end_ns


def _start_servers(*servers: Pod) -> None:
    for server in servers:
        proc = server.start_server(PORT, reply_bytes=2000)
        server.wait_listening(PORT, proc=proc)


def test_loss_on_one_path_is_the_network_and_resolves(
    root_required: None, kafka_bootstrap: str, topics: Topics, cluster: Cluster, tmp_path: Path
) -> None:
    checkout = cluster.add_pod("checkout", node="node-b1", namespace=NS)
    stock = cluster.add_pod("stock", node="node-b1", namespace=NS)
    search = cluster.add_pod("search", node="node-c1", namespace=NS)
    frontend = cluster.add_pod("frontend", node="node-a1", namespace=NS)
    cart = cluster.add_pod("cart", node="node-a1", namespace=NS)
    publish_metadata(kafka_bootstrap, topics, cluster.write_objects(tmp_path / "objects.yaml"))
    seen = Seen(kafka_bootstrap, topics)
    lossy_path, healthy_path = ("node", "node-a1", "node-b1"), ("node", "node-a1", "node-c1")
    with running_pipeline(_pipeline(kafka_bootstrap, topics, tmp_path, VERDICT)):
        _start_servers(checkout, stock, search)
        with Load([(frontend, checkout), (cart, stock), (frontend, search)]):
            seen.until(lambda s: _busy(s, [lossy_path, healthy_path], 2), "healthy windows")
            loss_start_ns = time.time_ns()
            with path_loss(
                cluster.run_id, [frontend.ip, cart.ip], [checkout.ip, stock.ip], LOSS_PERCENT
            ):
                seen.until(
                    lambda s: (
                        bool(s.events(NETWORK_RULE))
                        and sum(
                            _within(m, loss_start_ns, time.time_ns())
                            for m in s.windows(*lossy_path).values()
                        )
                        >= 2
                    ),
                    "network alert and two lossy windows",
                )
            loss_end_ns = time.time_ns()
            seen.until(
                lambda s: any(e.status == "resolved" for e in s.events(NETWORK_RULE)),
                "resolved network alert",
            )
        seen.until(
            lambda s: (
                any(m.window_start_ns >= loss_end_ns for m in s.health)
                and any(d.window_start_ns >= loss_end_ns for d in s.drops)
            ),
            "windows after the loss",
        )

    # The verdict: the network, on that path, both services on it; nothing else.
    events = seen.alerts
    network = seen.events(NETWORK_RULE)
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
    assert network[1].window_start_ns >= loss_end_ns - WINDOW_S * 1e9
    # No service is blamed, not even where a pair fell below min_connections in a window.
    blamed = [(e.status, e.window_start_ns, e.evidence) for e in events if e.rule == SERVICE_RULE]
    assert blamed == [], (blamed, network, loss_start_ns, loss_end_ns)

    # The health metrics: retransmissions and the rule's drops on that path only.
    def lossy(path: tuple[str, str, str]) -> list[PathHealthMetric]:
        return [m for m in seen.windows(*path).values() if _within(m, loss_start_ns, loss_end_ns)]

    def rate(ms: list[PathHealthMetric]) -> float:
        assert ms
        return sum(m.retrans_segs for m in ms) / sum(m.segs_out for m in ms)

    healthy_before = [
        m for m in seen.windows(*lossy_path).values() if m.window_end_ns <= loss_start_ns
    ]
    assert rate(lossy(lossy_path)) > 0.02
    assert rate(lossy(healthy_path)) < 0.005
    assert rate(healthy_before) < 0.005
    joined = sum(m.drops.get("NETFILTER_DROP", 0) for m in lossy(lossy_path))
    assert joined > 0
    assert all(m.drops.get("NETFILTER_DROP", 0) == 0 for m in seen.windows(*healthy_path).values())
    assert all(m.drops.get("NETFILTER_DROP", 0) == 0 for m in healthy_before)
    zone = [m for m in seen.health if m.scope == "zone" and m.source == "zone-a"]
    assert {m.destination for m in zone} == {"zone-b", "zone-c"}

    # The kernel's reason: the rule's drops, on the node, for those addresses only.
    path_ips = {frontend.ip, cart.ip, checkout.ip, stock.ip}
    netfilter = [d for d in seen.drops if d.reason == "NETFILTER_DROP"]
    ours = [d for d in netfilter if {d.src_addr, d.dst_addr} <= path_ips]
    reported = sum(d.packets for d in ours)
    assert reported > 0
    assert all(d.node_netns and d.cgroup_id == 0 and d.ip_proto == 6 for d in ours)
    assert not [d for d in netfilter if search.ip in (d.src_addr, d.dst_addr)]
    on_path = sum(m.drops.get("NETFILTER_DROP", 0) for m in seen.windows(*lossy_path).values())
    assert on_path <= reported  # each drop joins a path at most once per scope
    print(
        f"NETFILTER_DROP packets: {reported} reported, {on_path} on the path's health "
        f"({joined} in windows wholly inside the loss)"
    )


def test_loss_across_a_zone_is_the_zone_path_listing_its_services(
    root_required: None, kafka_bootstrap: str, topics: Topics, cluster: Cluster, tmp_path: Path
) -> None:
    checkout = cluster.add_pod("checkout", node="node-b1", namespace=NS)
    stock = cluster.add_pod("stock", node="node-b2", namespace=NS)
    search = cluster.add_pod("search", node="node-c1", namespace=NS)
    frontend = cluster.add_pod("frontend", node="node-a1", namespace=NS)
    cart = cluster.add_pod("cart", node="node-a1", namespace=NS)
    publish_metadata(kafka_bootstrap, topics, cluster.write_objects(tmp_path / "objects.yaml"))
    seen = Seen(kafka_bootstrap, topics)
    lossy_zone, healthy_zone = ("zone", "zone-a", "zone-b"), ("zone", "zone-a", "zone-c")
    with running_pipeline(_pipeline(kafka_bootstrap, topics, tmp_path, DROPS_ONLY_VERDICT)):
        _start_servers(checkout, stock, search)
        with Load([(frontend, checkout), (cart, stock), (frontend, search)]):
            seen.until(lambda s: _busy(s, [lossy_zone, healthy_zone], 2), "healthy windows")
            loss_start_ns = time.time_ns()
            with path_loss(
                cluster.run_id, [frontend.ip, cart.ip], [checkout.ip, stock.ip], LOSS_PERCENT
            ):
                seen.until(lambda s: bool(s.events(NETWORK_RULE)), "network alert")
            loss_end_ns = time.time_ns()
            seen.until(
                lambda s: any(e.status == "resolved" for e in s.events(NETWORK_RULE)),
                "resolved network alert",
            )

    network = seen.events(NETWORK_RULE)
    assert [e.status for e in network] == ["firing", "resolved"], seen.alerts
    fired = network[0]
    assert fired.group == {"scope": "zone", "source": "zone-a", "destination": "zone-b"}
    evidence = fired.evidence[0]
    assert evidence["summary"] == "network path zone-a -> zone-b degraded"
    assert evidence["services"] == [
        f"{w('cart')} -> {w('stock')}",
        f"{w('frontend')} -> {w('checkout')}",
    ]
    assert evidence["healthy_paths"] == ["zone-a -> zone-c"]
    pairs = evidence["pairs"]
    assert isinstance(pairs, dict)
    assert all(p["drop_rate"] > 0.01 for p in pairs.values()), pairs
    assert loss_start_ns - WINDOW_S * 1e9 <= fired.window_start_ns <= loss_end_ns
    # Each node path holds one degraded pair only: neither the node paths nor a service.
    blamed = [(e.status, e.window_start_ns, e.evidence) for e in seen.events(SERVICE_RULE)]
    assert blamed == [], (blamed, network, loss_start_ns)
    zone_drops = [
        m for m in seen.windows(*lossy_zone).values() if _within(m, loss_start_ns, loss_end_ns)
    ]
    assert sum(m.drops.get("NETFILTER_DROP", 0) for m in zone_drops) > 0
    assert all(m.drops.get("NETFILTER_DROP", 0) == 0 for m in seen.windows(*healthy_zone).values())


def test_one_server_resetting_is_the_service_not_the_network(
    root_required: None, kafka_bootstrap: str, topics: Topics, cluster: Cluster, tmp_path: Path
) -> None:
    checkout = cluster.add_pod("checkout", node="node-b1", namespace=NS)
    flaky = cluster.add_pod("flaky", node="node-b1", namespace=NS)
    search = cluster.add_pod("search", node="node-c1", namespace=NS)
    frontend = cluster.add_pod("frontend", node="node-a1", namespace=NS)
    cart = cluster.add_pod("cart", node="node-a1", namespace=NS)
    publish_metadata(kafka_bootstrap, topics, cluster.write_objects(tmp_path / "objects.yaml"))
    seen = Seen(kafka_bootstrap, topics)
    with running_pipeline(_pipeline(kafka_bootstrap, topics, tmp_path, VERDICT)):
        _start_servers(checkout, search)
        resetter = flaky.start([sys.executable, "-c", RESETTER, str(PORT)])
        flaky.wait_listening(PORT, proc=resetter)
        with Load([(frontend, checkout), (cart, flaky), (frontend, search)]):
            seen.until(lambda s: bool(s.events(SERVICE_RULE)), "service alert")
        seen.until(
            lambda s: any(e.status == "resolved" for e in s.events(SERVICE_RULE)),
            "resolved service alert",
        )

    service = seen.events(SERVICE_RULE)
    assert [e.status for e in service] == ["firing", "resolved"], seen.alerts
    assert service[0].group == {"server_workload": w("flaky")}
    assert service[0].affected_workloads == [w("cart"), w("flaky")]
    assert service[0].evidence[0]["summary"] == f"service {w('flaky')} degraded"
    assert seen.events(NETWORK_RULE) == []
