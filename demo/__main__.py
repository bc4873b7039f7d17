"""`make demo`: the whole pipeline on a simulated node, with a real Kafka broker.

Starts the project's broker, builds pods in two zones, publishes their Kubernetes objects,
starts collector, enricher and processor, runs traffic between the pods, waits for the
windows to close and prints the per-workload-pair table read back from the metrics topic.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from demo.readout import TopicReader, format_table, summarize
from demo.services import PipelineSettings, publish_metadata, running_pipeline
from flowscope.codec import JsonCodec
from flowscope.records import TcpPairMetric
from flowscope.topics import Topics
from simnode import Cluster, NodeSpec, Pod


@dataclass(frozen=True)
class Flow:
    client: Pod
    server: Pod
    port: int
    count: int
    send_bytes: int
    reply_bytes: int


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--window-seconds", type=float, default=5.0)
    parser.add_argument("--grace-seconds", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=40, help="per client pod and flow")
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("FLOWSCOPE_BOOTSTRAP_SERVERS"),
        help="use this broker instead of starting the project's own",
    )
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy service logs here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print(
            "the demo loads BPF programs and creates network namespaces: run it as root",
            file=sys.stderr,
        )
        return 2

    bootstrap = args.bootstrap_servers
    if not bootstrap:
        from devbroker import Broker

        broker = Broker()
        _say("starting Kafka (KRaft) from the project's Maven-fetched jars ...")
        broker.start()
        bootstrap = broker.bootstrap
    topics = Topics(prefix=f"demo-{uuid.uuid4().hex[:6]}")
    _say(f"broker {bootstrap}, topics {topics.prefix}.*")

    nodes = [
        NodeSpec("node-a1", zone="eu-west-1a", region="eu-west-1"),
        NodeSpec("node-a2", zone="eu-west-1a", region="eu-west-1"),
        NodeSpec("node-b1", zone="eu-west-1b", region="eu-west-1"),
    ]
    log_dir = args.keep_logs or Path(tempfile.mkdtemp(prefix="flowscope-demo-"))
    with Cluster(nodes) as cluster:
        fe_a = cluster.add_pod("frontend", node="node-a1", namespace="shop")
        fe_b = cluster.add_pod("frontend", node="node-b1", namespace="shop")
        catalog = cluster.add_pod("catalog", node="node-a2", namespace="shop")
        checkout = cluster.add_pod("checkout", node="node-b1", namespace="shop")
        payments = cluster.add_pod("payments", node="node-a1", namespace="billing")
        objects = cluster.write_objects(log_dir / "objects.yaml")
        _say(f"simulated cluster: {len(cluster.pods)} pods on 3 nodes in 2 zones ({objects})")
        print(publish_metadata(bootstrap, topics, objects), end="")
        n = args.connections
        flows = [
            Flow(fe_a, catalog, 8080, n, 600, 24_000),
            Flow(fe_b, catalog, 8080, n, 600, 24_000),
            Flow(fe_a, checkout, 8081, n // 2, 4_000, 800),
            Flow(fe_b, checkout, 8081, n // 2, 4_000, 800),
            Flow(checkout, payments, 9090, n // 4, 1_500, 300),
        ]
        settings = PipelineSettings(
            bootstrap=bootstrap,
            topics=topics,
            node_name="sim-host",
            log_dir=log_dir,
            window_s=args.window_seconds,
            grace_s=args.grace_seconds,
        )
        metrics_reader = TopicReader(bootstrap, topics.metrics_tcp_pairs)
        _say("starting collector (BPF), enricher and processor (Faust) ...")
        with running_pipeline(settings):
            servers = {}
            for f in flows:
                if (f.server.name, f.port) not in servers:
                    proc = f.server.start_server(f.port, reply_bytes=f.reply_bytes)
                    f.server.wait_listening(f.port, proc=proc)
                    servers[(f.server.name, f.port)] = (f.server, proc)
            _say(f"running {sum(f.count for f in flows)} connections between pods ...")
            with ThreadPoolExecutor(len(flows)) as pool:
                summaries = list(
                    pool.map(
                        lambda f: f.client.run_client(
                            f.server.ip,
                            f.port,
                            count=f.count,
                            send_bytes=f.send_bytes,
                            expect_reply_bytes=f.reply_bytes,
                            interval_ms=50,
                        ),
                        flows,
                    )
                )
            for server, proc in servers.values():
                server.stop_server(proc)
            done = sum(s.completed for s in summaries)
            wait = args.window_seconds + args.grace_seconds + 3
            _say(f"{done} connections completed; waiting {wait:.0f}s for the windows to close ...")
            time.sleep(wait)
            raw = metrics_reader.read(5.0)
        metrics_reader.close()
    metrics = [JsonCodec(TcpPairMetric).decode(v) for v in raw]
    # The collector sees every connection on this machine, not only the demo's pods: keep the
    # demo's namespaces in the table and say how much else was seen.
    ours = ("shop/", "billing/")
    pods = [m for m in metrics if m.client_workload.startswith(ours)]
    others = sum(m.connections for m in metrics) - sum(m.connections for m in pods)
    print()
    print(f"Service pairs, {len(metrics)} window records from {topics.metrics_tcp_pairs}:")
    print(format_table(summarize(pods)))
    print(f"\n(+ {others} other connections on this machine: host processes, Kafka clients, ...)")
    print(f"\nservice logs and objects: {log_dir}")
    expected = sum(f.count for f in flows)
    seen = sum(m.connections for m in pods)
    if seen != expected:
        _say(f"WARNING: {seen} connections in the metrics, {expected} made")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
