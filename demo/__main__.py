"""`make demo`: the whole pipeline on a simulated node, with a real Kafka broker.

Starts the project's broker, builds pods on three nodes in two zones (plus a DNS server pod),
publishes their Kubernetes objects, starts collector, enricher and processor, runs traffic
between the pods (including connections to a closed port and failing DNS names), waits for
the windows to close and prints what the metric topics say: latency and failures per service
pair, bytes and dollars per zone pair, DNS failure rates, and alerts.
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
from typing import TypeVar

from demo.readout import TopicReader
from demo.services import PipelineSettings, publish_metadata, running_pipeline
from demo.tables import alerts_table, cost_table, dns_table, latency_table
from flowscope.codec import JsonCodec
from flowscope.records import AlertEvent, CostPairMetric, DnsMetric, TcpLatencyMetric
from flowscope.topics import Topics
from processors.core.dedupe import FirstPerId
from simnode import Cluster, NodeSpec, Pod
from simnode.dns import DnsServerProcess, PodResolvConf, kubernetes_search, render

T = TypeVar("T")
DEMO_NAMESPACES = ("shop/", "billing/")
DNS_RULES = {
    "default": {"rcode": "NXDOMAIN"},
    "names": {
        "catalog.shop.svc.cluster.local": {"addrs": ["10.96.0.10"]},
        "api.payments.example": {"addrs": ["192.0.2.10"]},
        "flaky.partner.example": {"rcode": "SERVFAIL"},
        "slow.partner.example": {"delay_ms": 150, "addrs": ["192.0.2.20"]},
    },
}


@dataclass(frozen=True)
class Flow:
    client: Pod
    server: Pod
    port: int
    count: int
    send_bytes: int
    reply_bytes: int
    # Where the client connects: a Service's ClusterIP and port (kube-proxy's rules in the
    # node's namespace send it to the server pod), or None for the pod's address.
    via: tuple[str, int] | None = None

    def target(self) -> tuple[str, int]:
        return self.via if self.via is not None else (self.server.ip, self.port)


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--window-seconds", type=float, default=5.0)
    parser.add_argument("--grace-seconds", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=40, help="per client pod and flow")
    parser.add_argument("--cloud", default="aws", help="price table (config/prices.yaml)")
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("FLOWSCOPE_BOOTSTRAP_SERVERS"),
        help="use this broker instead of starting the project's own",
    )
    parser.add_argument("--keep-logs", type=Path, default=None, help="write service logs here")
    return parser.parse_args()


def _read(reader: TopicReader, type_: type[T], timeout_s: float) -> list[T]:
    codec = JsonCodec(type_)
    return [r for v in reader.read(timeout_s) for r in codec.decode_batch(v)]


def main() -> int:
    args = _parse_args()
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
    log_dir.mkdir(parents=True, exist_ok=True)
    with Cluster(nodes) as cluster:
        fe_a = cluster.add_pod("frontend", node="node-a1", namespace="shop")
        fe_b = cluster.add_pod("frontend", node="node-b1", namespace="shop")
        catalog = cluster.add_pod("catalog", node="node-a2", namespace="shop")
        checkout = cluster.add_pod("checkout", node="node-b1", namespace="shop")
        payments = cluster.add_pod("payments", node="node-a1", namespace="billing")
        coredns = cluster.add_pod("coredns", node="node-a2", namespace="kube-system")
        # DNS clients of their own: every process of these pods sees the pod's resolv.conf
        # (search path, ndots:5), as every container of a real pod does.
        recommenders = [
            cluster.add_pod("recommender", node=node, namespace="shop")
            for node in ("node-a1", "node-b1")
        ]
        dns_server = DnsServerProcess(coredns, DNS_RULES)
        # Services as kube-proxy (nftables mode) programs them, in the node's namespace.
        catalog_svc = cluster.add_service(
            "catalog", namespace="shop", selector={"app": "catalog"}, port=80, target_port=8080
        )
        checkout_svc = cluster.add_service(
            "checkout", namespace="shop", selector={"app": "checkout"}, port=80, target_port=8081
        )
        kube_dns = cluster.add_service(
            "kube-dns",
            namespace="kube-system",
            selector={"app": "coredns"},
            port=53,
            protocols=("UDP", "TCP"),
        )
        objects = cluster.write_objects(log_dir / "objects.yaml")
        _say(f"simulated cluster: {len(cluster.pods)} pods on 3 nodes in 2 zones ({objects})")
        print(publish_metadata(bootstrap, topics, objects), end="")
        n = args.connections
        flows = [
            Flow(fe_a, catalog, 8080, n, 600, 24_000, (catalog_svc.cluster_ip, 80)),
            Flow(fe_b, catalog, 8080, n, 600, 24_000, (catalog_svc.cluster_ip, 80)),
            Flow(fe_a, checkout, 8081, n // 2, 4_000, 800, (checkout_svc.cluster_ip, 80)),
            Flow(fe_b, checkout, 8081, n // 2, 4_000, 800, (checkout_svc.cluster_ip, 80)),
            Flow(checkout, payments, 9090, n // 4, 1_500, 300),
        ]
        settings = PipelineSettings(
            bootstrap=bootstrap,
            topics=topics,
            node_name="sim-host",
            log_dir=log_dir,
            window_s=args.window_seconds,
            grace_s=args.grace_seconds,
            collector_args=(
                "--dns-enabled",
                "true",
                "--dns-timeout-seconds",
                "1",
                "--service-cidrs",
                str(cluster.service_network),
            ),
            processor_args=("--dns-grace-seconds", "2.5", "--cloud", args.cloud),
        )
        readers = {
            name: TopicReader(bootstrap, topic)
            for name, topic in (
                ("latency", topics.metrics_tcp_latency),
                ("cost", topics.metrics_cost_pairs),
                ("dns", topics.metrics_dns),
                ("alerts", topics.alerts),
            )
        }
        _say("starting collector (BPF), enricher and processor (Faust) ...")
        started = time.monotonic()
        with running_pipeline(settings):
            servers = {}
            for f in flows:
                if (f.server.name, f.port) not in servers:
                    proc = f.server.start_server(f.port, reply_bytes=f.reply_bytes)
                    f.server.wait_listening(f.port, proc=proc)
                    servers[(f.server.name, f.port)] = (f.server, proc)
            _say(
                f"running {sum(f.count for f in flows)} connections between pods, "
                "5 to a closed port, and DNS lookups ..."
            )
            with ThreadPoolExecutor(len(flows) + 1) as pool:
                summaries = pool.map(
                    lambda f: f.client.run_client(
                        *f.target(),
                        count=f.count,
                        send_bytes=f.send_bytes,
                        expect_reply_bytes=f.reply_bytes,
                        interval_ms=50,
                    ),
                    flows,
                )
                lookups = pool.submit(_dns_lookups, recommenders, kube_dns.cluster_ip)
                # Nothing listens on checkout:7070: every connect is refused.
                fe_b.run(
                    Pod.python(
                        "simnode.traffic",
                        "client",
                        "--host",
                        checkout.ip,
                        "--port",
                        "7070",
                        "--count",
                        "5",
                        "--send-bytes",
                        "10",
                    ),
                    check=False,
                )
                done = sum(s.completed for s in summaries)
                lookups.result()
            for server, proc in servers.values():
                server.stop_server(proc)
            traffic_s = time.monotonic() - started
            wait = args.window_seconds + args.grace_seconds + 6
            _say(f"{done} connections completed; waiting {wait:.0f}s for the windows to close ...")
            time.sleep(wait)
            latency = FirstPerId().keep(_read(readers["latency"], TcpLatencyMetric, 3.0))
            cost = FirstPerId().keep(_read(readers["cost"], CostPairMetric, 1.0))
            dns = FirstPerId().keep(_read(readers["dns"], DnsMetric, 1.0))
            alerts = _read(readers["alerts"], AlertEvent, 1.0)
        for reader in readers.values():
            reader.close()
        dns_server.stop()

    ours = [m for m in latency if m.client_workload.startswith(DEMO_NAMESPACES)]
    others = sum(m.connections for m in latency) - sum(m.connections for m in ours)
    print(f"\nLatency and failures per service pair ({topics.metrics_tcp_latency}):")
    print(latency_table(ours))
    print(f"(+ {others} other connections on this machine: host processes, Kafka clients, ...)")
    print(
        f"\nBytes and cost per zone pair, {args.cloud} prices, GB = 10^9 bytes "
        f"({topics.metrics_cost_pairs}):"
    )
    print(cost_table([m for m in cost if m.source_workload.startswith(DEMO_NAMESPACES)], traffic_s))
    print(f"\nDNS per client and server ({topics.metrics_dns}):")
    print(dns_table([m for m in dns if m.client_workload.startswith(DEMO_NAMESPACES)]))
    print(f"\nAlerts ({topics.alerts}):")
    print(alerts_table(alerts) if alerts else "(none fired)")
    print(f"\nservice logs and objects: {log_dir}")
    print(
        f"\nread this run's topics again, as a person or Prometheus would:\n"
        f"  flowscope top --bootstrap-servers {bootstrap} --topic-prefix {topics.prefix}\n"
        f"  flowscope tail enriched.tcp --start earliest --filter 'outcome!=closed' "
        f"--bootstrap-servers {bootstrap} --topic-prefix {topics.prefix}\n"
        f"  flowscope exporter --bootstrap-servers {bootstrap} --topic-prefix "
        f"{topics.prefix} --start earliest   # then curl :9464/metrics\n"
        f"  flowscope sink --bootstrap-servers {bootstrap} --topic-prefix {topics.prefix} "
        f"--warehouse ./lake   # Iceberg tables, read with pyiceberg/pyarrow\n"
        f"  flowscope alerts --bootstrap-servers {bootstrap} --topic-prefix "
        f"{topics.prefix} --alertmanager-url http://127.0.0.1:9093"
    )
    expected = sum(f.count for f in flows) + 5
    seen = sum(m.connections for m in ours)
    if seen != expected:
        _say(f"WARNING: {seen} connections in the metrics, {expected} made")
        return 1
    return 0


def _dns_lookups(pods: list[Pod], dns_ip: str, rounds: int = 8, pause_s: float = 1.5) -> None:
    """Names looked up the way applications do (getaddrinfo, ndots:5 search path), so the
    table shows search-path noise apart from the real failures. Spread over a few windows,
    so that the DNS failure-rate alert (2 windows in a row) can fire."""
    names = [
        "catalog",
        "api.payments.example",
        "flaky.partner.example",
        "slow.partner.example",
        "missing-service",
    ]
    confs = [
        PodResolvConf(pod, render([dns_ip], kubernetes_search("shop"), ndots=5)) for pod in pods
    ]
    for _ in range(rounds):
        for pod, conf in zip(pods, confs, strict=True):
            pod.run(conf.command(Pod.python("simnode.dns", "resolve", *names)), check=False)
        time.sleep(pause_s)


if __name__ == "__main__":
    sys.exit(main())
