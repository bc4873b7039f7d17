"""The collector's raw records name the right pod and container on both ends, for every cgroup
layout real clusters use: the kubelet's cgroupfs or systemd driver, times containerd, CRI-O
or Docker naming the container's cgroup (``simnode.cgroup.Layout``).

Real connections between two simulated pods, read back through the collector's own loader,
ring buffer reader, cgroup resolver and message encoder (the bytes it would produce to
Kafka), decoded as ``RawTcpConnection``. One cluster per layout, a few connections each; the
pods' QoS classes rotate so that each driver has Guaranteed, Burstable and BestEffort pods on
both ends. With CRI-O a client also runs in the container's conmon cgroup: the pod's, no
container.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.node.attribution import CgroupResolver
from collector.settings import DEFAULT_BPF_OBJECT
from collector.tcp.events import DecodeStats, clock_offset_ns
from collector.tcp.messages import MessageEncoder, NativeMessages
from collector.tcp.source import TcpConnSource
from flowscope.codec import JsonCodec
from flowscope.records import RawTcpConnection
from simnode import ClientSummary, Cluster, NodeSpec, Pod, find_run
from simnode.cgroup import CGROUP_DRIVERS, QOS_CLASSES, RUNTIMES, CgroupDriver, QosClass, Runtime

NODES = [NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]
COUNT = 3
SEND, REPLY = 1500, 700
CODEC = JsonCodec(RawTcpConnection)
LAYOUTS = [(d, r) for d in CGROUP_DRIVERS for r in RUNTIMES]


def qos_pair(runtime: Runtime) -> tuple[QosClass, QosClass]:
    """(client, server) QoS: rotated by runtime, so each driver sees all three on each end."""
    i = RUNTIMES.index(runtime)
    return QOS_CLASSES[i], QOS_CLASSES[(i + 1) % len(QOS_CLASSES)]


@pytest.fixture(scope="module")
def source(bpf_built: None) -> Iterator[TcpConnSource]:
    with TcpConnSource(DEFAULT_BPF_OBJECT, ringbuf_bytes=4 << 20) as src:
        yield src


def relative(cluster: Cluster, path: Path) -> str:
    return "/" + str(path.relative_to(cluster.cgroup_root))


def client_in_monitor(pod: Pod, host: str, port: int) -> ClientSummary:
    """``simnode.traffic client`` started in the pod, moved into its CRI-O conmon cgroup
    before it opens a socket (the shell moves itself, then execs the client: same pid)."""
    assert pod.monitor_cgroup_dir is not None
    argv = [
        "sh",
        "-c",
        'echo $$ > "$0" && exec "$@"',
        str(pod.monitor_cgroup_dir / "cgroup.procs"),
        *Pod.python(
            "simnode.traffic",
            "client",
            "--host",
            host,
            "--port",
            str(port),
            "--count",
            "1",
            "--send-bytes",
            str(SEND),
            "--expect-reply-bytes",
            str(REPLY),
        ),
    ]
    done = pod.run(argv, timeout_s=60)
    return ClientSummary.from_json(done.stdout.strip().splitlines()[-1])


def collect(
    source: TcpConnSource,
    encoder: MessageEncoder,
    ips: set[str],
    port: int,
    want: int,
    timeout_s: float = 10,
) -> list[tuple[str, RawTcpConnection]]:
    """(key, record) for final records between ``ips`` with ``port`` on one end, until
    ``want`` arrived (then what arrives within another 0.3 s: a duplicate would)."""
    found: list[tuple[str, RawTcpConnection]] = []
    stats = DecodeStats()
    offset = clock_offset_ns()
    deadline = time.monotonic() + timeout_s
    extra_until: float | None = None
    while time.monotonic() < (extra_until or deadline):
        source.wait(0.1)
        for key, value, _n in encoder.encode(source.read(), offset, stats):
            for rec in CODEC.decode_batch(value):
                if (
                    {rec.local_addr, rec.remote_addr} == ips
                    and port in (rec.local_port, rec.remote_port)
                    and not rec.interim
                ):
                    found.append((key, rec))
        if extra_until is None and len(found) >= want:
            extra_until = time.monotonic() + 0.3
    assert stats.decode_errors == 0
    return found


@pytest.mark.parametrize(("driver", "runtime"), LAYOUTS, ids=[f"{d}-{r}" for d, r in LAYOUTS])
def test_records_name_pod_and_container_on_both_ends(
    source: TcpConnSource, driver: CgroupDriver, runtime: Runtime
) -> None:
    client_qos, server_qos = qos_pair(runtime)
    port = 20000 + secrets.randbelow(20000)
    with Cluster(NODES, cgroup_driver=driver, runtime=runtime) as cluster:
        client = cluster.add_pod("client", node="node-a1", qos=client_qos)
        server = cluster.add_pod("server", node="node-b1", qos=server_qos)
        # What the kernel says each pod's processes are in is the layout asked for.
        for pod in (client, server):
            assert pod.cgroup_path == relative(cluster, pod.cgroup_dir)
            assert ("kubepods.slice/" in pod.cgroup_path) == (driver == "systemd")
        proc = server.start_server(port, REPLY, request_bytes=SEND)
        server.wait_listening(port, proc=proc)
        summary = client.run_client(
            server.ip, port, count=COUNT, send_bytes=SEND, expect_reply_bytes=REPLY
        )
        assert summary.completed == COUNT
        monitor = None
        if runtime == "crio":
            monitor = client_in_monitor(client, server.ip, port)
            assert monitor.completed == 1
        served = server.stop_server(proc)
        assert served.connections == COUNT + (monitor is not None)

        want = 2 * (COUNT + (monitor is not None))
        encoder = NativeMessages(CgroupResolver(cluster.cgroup_root), node="node-x")
        records = collect(source, encoder, {client.ip, server.ip}, port, want)
        run_id = cluster.run_id

    assert find_run(run_id, cluster.cgroup_root).empty()  # teardown took every layout's dirs
    by_end: dict[tuple[str, str], list[tuple[str, RawTcpConnection]]] = {}
    for key, rec in records:
        by_end.setdefault((rec.role, rec.local_addr), []).append((key, rec))
    assert sorted(by_end) == [("client", client.ip), ("server", server.ip)], records
    clients, servers = by_end[("client", client.ip)], by_end[("server", server.ip)]
    assert len(clients) == len(servers) == want // 2, records

    container_ports = set(summary.local_ports)
    monitor_ports = set(monitor.local_ports) if monitor is not None else set()
    assert {r.local_port for _k, r in clients} == container_ports | monitor_ports
    assert {r.remote_port for _k, r in servers} == container_ports | monitor_ports
    for key, rec in clients:
        assert (key, rec.pod_uid) == (client.uid, client.uid)
        if rec.local_port in monitor_ports:
            # CRI-O's conmon: the pod's, but not the container.
            assert client.monitor_cgroup_dir is not None
            assert rec.cgroup_path == relative(cluster, client.monitor_cgroup_dir)
            assert rec.container_id is None
        else:
            assert (rec.cgroup_path, rec.container_id) == (client.cgroup_path, client.container_id)
        assert (rec.bytes_sent, rec.bytes_received) == (SEND, REPLY)
    for key, rec in servers:
        assert (key, rec.pod_uid) == (server.uid, server.uid)
        assert (rec.cgroup_path, rec.container_id) == (server.cgroup_path, server.container_id)
        assert (rec.bytes_sent, rec.bytes_received) == (REPLY, SEND)
