"""End-to-end benchmark: connections pushed through the whole pipeline on the simulated node.

Runs the real broker, collector, enricher and processor, makes short connections between two
pods in different zones as fast as a few client processes can, then reports:
  * the connection rate reached with the whole pipeline running, and whether every
    connection was accounted in the metrics (lost = made - counted);
  * per stage, the delay from a connection's close (kernel time) to its record on the raw and
    enriched topics, and to the publication of its window's metric (p50/p99/max), taken from
    the Kafka message timestamps;
  * each service's CPU seconds per 1,000 connections and peak RSS.

    python -m bench.pipeline [--connections 6000] [--clients 4] [--window-seconds 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from demo.readout import TopicReader
from demo.services import PipelineSettings, publish_metadata, running_pipeline
from flowscope.codec import JsonCodec
from flowscope.records import EnrichedTcpConnection, RawTcpConnection, TcpPairMetric
from flowscope.topics import Topics
from simnode import Cluster, NodeSpec

PORT = 8080
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fmt_ms(values: list[float]) -> str:
    return (
        f"p50 {pct(values, 0.5):8.1f} ms  p99 {pct(values, 0.99):8.1f} ms  "
        f"max {max(values, default=float('nan')):8.1f} ms  (n={len(values)})"
    )


def main() -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--connections", type=int, default=6000, help="total, split over clients")
    p.add_argument("--clients", type=int, default=4, help="client processes in parallel")
    p.add_argument("--window-seconds", type=float, default=2.0)
    p.add_argument("--grace-seconds", type=float, default=1.0)
    p.add_argument("--bootstrap-servers", default=os.environ.get("FLOWSCOPE_BOOTSTRAP_SERVERS"))
    args = p.parse_args()

    bootstrap = args.bootstrap_servers
    if not bootstrap:
        from devbroker import Broker

        broker = Broker()
        broker.start()
        bootstrap = broker.bootstrap
    topics = Topics(prefix=f"bench-pipeline-{uuid.uuid4().hex[:6]}")
    nodes = [NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]
    log_dir = Path(tempfile.mkdtemp(prefix="flowscope-bench-"))
    per_client = args.connections // args.clients
    with Cluster(nodes) as cluster:
        server = cluster.add_pod("server", node="node-b1", namespace="bench")
        clients = [
            cluster.add_pod("client", node="node-a1", namespace="bench")
            for _ in range(args.clients)
        ]
        objects = cluster.write_objects(log_dir / "objects.yaml")
        publish_metadata(bootstrap, topics, objects)
        settings = PipelineSettings(
            bootstrap=bootstrap,
            topics=topics,
            node_name="sim-host",
            log_dir=log_dir,
            window_s=args.window_seconds,
            grace_s=args.grace_seconds,
            idle_allowance_s=1.0,
        )
        readers = {
            name: TopicReader(bootstrap, t)
            for name, t in (
                ("raw", topics.raw_tcp),
                ("enriched", topics.enriched_tcp),
                ("metrics", topics.metrics_tcp_pairs),
            )
        }
        with running_pipeline(settings) as services:
            proc = server.start_server(PORT, reply_bytes=100)
            server.wait_listening(PORT, proc=proc)
            cpu0 = {n: cpu_seconds(s.proc.pid) for n, s in services.items()}
            t0 = time.monotonic()
            with ThreadPoolExecutor(args.clients) as pool:
                summaries = list(
                    pool.map(
                        lambda c: c.run_client(
                            server.ip,
                            PORT,
                            count=per_client,
                            send_bytes=100,
                            expect_reply_bytes=100,
                            timeout_s=600,
                        ),
                        clients,
                    )
                )
            elapsed = time.monotonic() - t0
            server.stop_server(proc)
            made = sum(s.completed for s in summaries)
            client_ips = {c.ip for c in clients}
            # Wait until every connection is in a published window (or give up and report).
            metrics: list[tuple[int, TcpPairMetric]] = []
            codec = JsonCodec(TcpPairMetric)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                metrics += [
                    (ts, codec.decode(v)) for ts, v in readers["metrics"].read_timestamped(1)
                ]
                counted = sum(
                    m.connections
                    for _, m in metrics
                    if m.client_workload == "bench/Deployment/client"
                )
                if counted >= made:
                    break
            cpu = {n: cpu_seconds(s.proc.pid) - cpu0[n] for n, s in services.items()}
            rss = {n: peak_rss_mib(s.proc.pid) for n, s in services.items()}
            raw = [
                (ts, r)
                for ts, v in readers["raw"].read_timestamped(3)
                for r in JsonCodec(RawTcpConnection).decode_batch(v)
            ]
            enriched = [
                (ts, e)
                for ts, v in readers["enriched"].read_timestamped(3)
                for e in JsonCodec(EnrichedTcpConnection).decode_batch(v)
            ]
        for r in readers.values():
            r.close()

    ours_raw = [(ts, r) for ts, r in raw if r.role == "client" and r.local_addr in client_ips]
    ours_enr = [
        (ts, e)
        for ts, e in enriched
        if e.observer_role == "client" and e.client.address in client_ips
    ]
    pair = [(ts, m) for ts, m in metrics if m.client_workload == "bench/Deployment/client"]
    published = {m.window_start_ns: ts for ts, m in pair}
    window_ns = int(args.window_seconds * 1e9)
    metric_delay = [
        published[e.end_time_ns - e.end_time_ns % window_ns] - e.end_time_ns / 1e6
        for _, e in ours_enr
        if e.end_time_ns - e.end_time_ns % window_ns in published
    ]
    counted = sum(m.connections for _, m in pair)

    print(
        f"flowscope pipeline benchmark ({os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}), window {args.window_seconds}s + grace "
        f"{args.grace_seconds}s"
    )
    print(
        f"  connections made:         {made} by {args.clients} clients in {elapsed:.1f}s "
        f"= {made / elapsed:,.0f} conn/s through the pipeline"
    )
    print(
        f"  raw client records:       {len(ours_raw)}   enriched: {len(ours_enr)}   "
        f"counted in metrics: {counted}   lost: {made - counted}"
    )
    print(f"  close -> raw topic:       {fmt_ms([ts - r.end_time_ns / 1e6 for ts, r in ours_raw])}")
    print(f"  close -> enriched topic:  {fmt_ms([ts - e.end_time_ns / 1e6 for ts, e in ours_enr])}")
    print(f"  close -> window metric:   {fmt_ms(metric_delay)}")
    print(
        "    (a window is published at its end + grace; the floor is grace + window/2 on average)"
    )
    for name in cpu:
        print(
            f"  {name:10s} CPU {cpu[name]:6.2f}s = {1000 * cpu[name] / max(made, 1):6.3f} s per "
            f"1,000 connections   peak RSS {rss[name]:6.1f} MiB"
        )
    print(f"  logs: {log_dir}")
    return 0 if counted == made else 1


if __name__ == "__main__":
    sys.exit(main())
