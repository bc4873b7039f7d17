"""The enricher bench's synthetic cluster and its raw records: a large cluster's metadata
(pods in workloads of five, spread over nodes in three zones, Services with ClusterIPs) and a
node-like mix of connections between them (see :func:`raw_records`)."""

from __future__ import annotations

import random

import msgspec

from flowscope.records import RawTcpConnection
from flowscope.records.metadata import Meta, NodeMeta, PodMeta, ServiceMeta, ServicePort

S = 1_000_000_000
ZONES = ("eu-west-1a", "eu-west-1b", "eu-west-1c")
KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


def pod_ip(i: int) -> str:
    return f"10.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}"


def cluster(pods: int, nodes: int, services: int, now_ns: int) -> list[Meta]:
    metas: list[Meta] = [
        NodeMeta(
            name=f"node-{n}",
            zone=ZONES[n % len(ZONES)],
            region="eu-west-1",
            addresses=[f"172.20.{n // 256}.{n % 256}"],
        )
        for n in range(nodes)
    ]
    for i in range(pods):
        wl = i // 5  # five replicas per workload
        metas.append(
            PodMeta(
                uid=f"uid-{i:06d}",
                name=f"wl-{wl}-{i:06d}",
                namespace=f"ns-{wl % 50}",
                node=f"node-{i % nodes}",
                ips=[pod_ip(i)],
                start_time_ns=now_ns - 3600 * S,
                workload_kind=KINDS[wl % len(KINDS)],
                workload_name=f"wl-{wl}",
                labels={"app": f"wl-{wl}"},
            )
        )
    metas.extend(
        ServiceMeta(
            name=f"svc-{s}",
            namespace=f"ns-{s % 50}",
            cluster_ips=[f"10.96.{s // 256}.{s % 256}"],
            ports=[ServicePort(port=80)],
        )
        for s in range(services)
    )
    return metas


def raw_records(
    n: int, pods: int, nodes: int, services: int, now_ns: int, seed: int = 42
) -> list[bytes]:
    """A mix like a real node's: mostly pod to pod, some to ClusterIPs the collector could not
    translate, to nodes and to the internet; client- and server-side ends."""
    rng = random.Random(seed)
    enc = msgspec.json.Encoder()
    out = []
    for k in range(n):
        i = rng.randrange(pods)
        r = rng.random()
        if r < 0.80:
            remote = pod_ip(rng.randrange(pods))
        elif r < 0.85:
            s = rng.randrange(services)
            remote = f"10.96.{s // 256}.{s % 256}"
        elif r < 0.90:
            m = rng.randrange(nodes)
            remote = f"172.20.{m // 256}.{m % 256}"
        else:
            remote = f"{rng.randrange(1, 223)}.{rng.randrange(256)}.7.{rng.randrange(256)}"
            if remote.startswith(("10.", "127.", "172.", "192.", "100.", "169.")):
                remote = "8.8.8.8"
        start = now_ns + k * 1000
        out.append(
            enc.encode(
                RawTcpConnection(
                    node=f"node-{i % nodes}",
                    start_time_ns=start,
                    end_time_ns=start + 5_000_000,
                    role="client" if k % 3 else "server",
                    family=4,
                    local_addr=pod_ip(i),
                    local_port=30000 + k % 30000,
                    remote_addr=remote,
                    remote_port=8080,
                    pid=1000 + i % 100,
                    comm="app",
                    cgroup_id=i,
                    cgroup_path=f"kubepods/burstable/poduid-{i:06d}/c{i:06d}",
                    pod_uid=f"uid-{i:06d}",
                    container_id=f"c{i:06d}",
                    bytes_sent=rng.randrange(100_000),
                    bytes_received=rng.randrange(100_000),
                    srtt_us=rng.randrange(50, 5000),
                    retrans_segs=0,
                    connect_latency_us=rng.randrange(50, 2000),
                )
            )
        )
    return out
