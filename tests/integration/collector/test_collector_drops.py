"""Kernel drops with the kernel's reason, for real: datagrams between two simulated pods are
dropped by nftables (on the node's forward hook, and in a pod's own output hook) and sent to
a port nobody listens on; bpf/drops.bpf.o (skb:kfree_skb) counts them, the collector's
reporter names the reason from the kernel's BTF and attributes each drop to where it
happened: the node, the sending pod's socket, the receiving pod's namespace."""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Iterator

import pytest

from collector.drops.reporter import DropReporter, DropSource, drop_reasons
from collector.node.attribution import CgroupResolver
from flowscope.codec import JsonCodec
from flowscope.records import RawPacketDrops
from flowscope.resources import SOURCE_ROOT as REPO_ROOT
from simnode import Cluster, NodeSpec
from simnode.impair import path_loss

DROPS_OBJECT = REPO_ROOT / "bpf" / ".output" / "drops.bpf.o"

SEND = r"""
import socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(count):
    try:
        s.sendto(b"x" * 100, (host, port))
    except OSError:
        pass  # EPERM from a local drop; ECONNREFUSED after an ICMP port unreachable
    time.sleep(0.002)
"""


@pytest.fixture
def cluster(root_required: None) -> Iterator[Cluster]:
    with Cluster([NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]) as c:
        yield c


def test_reason_names_come_from_the_running_kernel() -> None:
    reasons = drop_reasons()
    # Values differ between kernels; the names these are looked up by do not.
    assert {"NOT_SPECIFIED", "NO_SOCKET", "NETFILTER_DROP", "TCP_CSUM", "QDISC_DROP"} <= set(
        reasons.values()
    )
    assert len(set(reasons)) == len(reasons)


def test_drops_are_counted_with_their_reason_and_place(cluster: Cluster, bpf_built: None) -> None:
    client = cluster.add_pod("drop-client", node="node-a1")
    server = cluster.add_pod("drop-server", node="node-b1")
    assert client.netns is not None
    # A pod's namespace always holds a process (the sandbox's pause at least): how a drop
    # with no socket is attributed to the pod.
    server.start(["sleep", "120"], stdout=None, stderr=None)
    base = 30000 + secrets.randbelow(20000)
    forward_port, local_port, closed_port = base, base + 1, base + 2
    n_forward, n_local, n_closed = 40, 25, 30
    sent: list[tuple[str, bytes, str]] = []

    def produce(topic: str, value: bytes, key: str) -> bool:
        sent.append((topic, value, key))
        return True

    with DropSource(DROPS_OBJECT) as source:
        reporter = DropReporter(
            source,
            CgroupResolver(cluster.cgroup_root),
            produce,
            "t.raw.drops",
            "node-x",
            interval_s=0.3,
        )
        with (
            path_loss(
                cluster.run_id, [client.ip], [server.ip], 100, match=f"udp dport {forward_port}"
            ),
            path_loss(
                cluster.run_id,
                [client.ip],
                [server.ip],
                100,
                match=f"udp dport {local_port}",
                netns=client.netns,
                hook="output",
            ),
        ):
            for port, count in (
                (forward_port, n_forward),
                (local_port, n_local),
                (closed_port, n_closed),
            ):
                proc = client.start([sys.executable, "-c", SEND, server.ip, str(port), str(count)])
                while proc.poll() is None:
                    reporter.tick()
                    time.sleep(0.05)
                _, err = proc.communicate()
                assert proc.returncode == 0, err
        reporter.finish()
        counters = source.kernel_counters()
        assert counters["map_full"] == 0 and counters["no_reason"] == 0
        assert counters["drops"] >= n_forward + n_local + n_closed

    codec = JsonCodec(RawPacketDrops)
    records = [codec.decode(v) for topic, v, _ in sent if topic == "t.raw.drops"]
    ours = [r for r in records if {r.src_addr, r.dst_addr} == {client.ip, server.ip}]
    assert len({r.window_start_ns for r in ours}) >= 2  # several windows

    def total(**match: object) -> int:
        return sum(r.packets for r in ours if all(getattr(r, k) == v for k, v in match.items()))

    # On the node's forward hook: no socket any more, the node's namespace.
    assert (
        total(
            reason="NETFILTER_DROP", node_netns=True, cgroup_id=0, src_addr=client.ip, ip_proto=17
        )
        == n_forward
    )
    # In the client's own output hook: its socket, so its pod and container.
    assert (
        total(
            reason="NETFILTER_DROP",
            node_netns=False,
            pod_uid=client.uid,
            container_id=client.container_id,
            src_addr=client.ip,
        )
        == n_local
    )
    # Nobody listens: dropped by the server's stack, in its namespace, no socket.
    assert (
        total(reason="NO_SOCKET", pod_uid=server.uid, cgroup_id=0, dst_addr=server.ip) == n_closed
    )
    # Nothing else dropped these packets (ICMP errors back to the client aside).
    assert total(ip_proto=17) == n_forward + n_local + n_closed
    for r in ours:
        assert r.node == "node-x" and r.window_start_ns < r.window_end_ns
        assert r.bytes >= r.packets * 100
