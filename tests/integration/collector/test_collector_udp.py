"""UDP volume per pair, for real between two simulated pods: datagrams of known sizes and
counts, summed by bpf/udpflow.bpf.o (cgroup_skb on the cgroup v2 root), drained by the
collector's reporter, checked against the truth and attributed to both pods."""

from __future__ import annotations

import itertools
import json
import secrets
import sys
import time
from collections.abc import Iterator

import pytest

from collector.node.attribution import CgroupResolver
from collector.udp.flows import UdpFlowSource, UdpReporter
from flowscope.codec import JsonCodec
from flowscope.records import RawUdpFlow
from flowscope.resources import SOURCE_ROOT as REPO_ROOT
from simnode import Cluster, NodeSpec

UDP_OBJECT = REPO_ROOT / "bpf" / ".output" / "udpflow.bpf.o"

ECHO = r"""
import socket, sys
port, replies, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
print("ready", flush=True)
data, peer = s.recvfrom(65536)
for _ in range(replies):
    s.sendto(b"r" * size, peer)
got = 1
s.settimeout(2)
try:
    while True:
        s.recvfrom(65536)
        got += 1
except TimeoutError:
    pass
print(got, flush=True)
"""

SEND = r"""
import json, socket, sys, time
host = sys.argv[1]
port, count, size, replies = (int(a) for a in sys.argv[2:6])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(count):
    s.sendto(b"c" * size, (host, port))
    time.sleep(0.002)
s.settimeout(3)
got = 0
while got < replies:
    s.recvfrom(65536)
    got += 1
print(json.dumps({"port": s.getsockname()[1], "received": got}))
"""


@pytest.fixture
def cluster(root_required: None) -> Iterator[Cluster]:
    with Cluster([NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]) as c:
        yield c


def test_udp_pairs_count_exact_bytes_and_packets_both_ways(
    cluster: Cluster, bpf_built: None
) -> None:
    client = cluster.add_pod("udp-client", node="node-a1")
    server = cluster.add_pod("udp-server", node="node-b1")
    port = 30000 + secrets.randbelow(20000)
    sent: list[tuple[str, bytes, str]] = []

    def produce(topic: str, value: bytes, key: str) -> bool:
        sent.append((topic, value, key))
        return True

    count, size, replies, reply_size = 50, 300, 7, 1000
    with UdpFlowSource(UDP_OBJECT, cluster.cgroup_root) as source:
        reporter = UdpReporter(
            source,
            CgroupResolver(cluster.cgroup_root),
            produce,
            "t.raw.udp",
            "node-x",
            interval_s=0.5,
        )
        echo = server.start([sys.executable, "-c", ECHO, str(port), str(replies), str(reply_size)])
        assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
        proc = client.start(
            [sys.executable, "-c", SEND, server.ip, str(port), str(count), str(size), str(replies)]
        )
        # The reporter ticks while traffic flows: the pair spans several windows.
        while proc.poll() is None:
            reporter.tick()
            time.sleep(0.05)
        out, err = proc.communicate()
        assert proc.returncode == 0, err
        result = json.loads(out)
        echo_out, _ = echo.communicate(timeout=10)
        assert int(echo_out.strip().splitlines()[-1]) == count
        reporter.finish()
        assert source.kernel_counters()["map_full"] == 0

    codec = JsonCodec(RawUdpFlow)
    records = [codec.decode(v) for topic, v, _ in sent if topic == "t.raw.udp"]
    mine = [r for r in records if {r.local_addr, r.remote_addr} == {client.ip, server.ip}]
    assert len({(r.window_start_ns, r.local_addr) for r in mine}) >= 2  # several windows

    def total(local: str, field: str) -> int:
        return sum(getattr(r, field) for r in mine if r.local_addr == local)

    header = 20 + 8  # IPv4 + UDP
    assert total(client.ip, "packets_out") == count
    assert total(client.ip, "bytes_out") == count * (size + header)
    assert total(client.ip, "packets_in") == replies
    assert total(client.ip, "bytes_in") == replies * (reply_size + header)
    assert total(server.ip, "packets_in") == count
    assert total(server.ip, "bytes_out") == replies * (reply_size + header)
    for r in mine:
        if r.local_addr == client.ip:
            assert (r.local_port, r.remote_port) == (result["port"], port)
            assert (r.pod_uid, r.container_id) == (client.uid, client.container_id)
        else:
            assert (r.local_port, r.remote_port) == (port, result["port"])
            assert (r.pod_uid, r.container_id) == (server.uid, server.container_id)
        assert r.window_start_ns < r.window_end_ns
    windows = sorted({(r.window_start_ns, r.window_end_ns) for r in mine})
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(windows))
