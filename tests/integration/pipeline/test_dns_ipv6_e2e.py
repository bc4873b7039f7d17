"""DNS over IPv6 through the whole pipeline: on a dual-stack node with pods routed as Calico
routes them, a pod whose resolv.conf names the DNS pod's IPv6 address resolves AAAA records
through glibc with the kubelet's search path. The enriched DNS topic names both ends by their
IPv6 addresses, and the DNS metrics count each query once, search noise apart."""

from __future__ import annotations

import json
import time
from pathlib import Path

from demo.readout import TopicReader
from demo.services import PipelineSettings, publish_metadata, running_pipeline
from flowscope.codec import JsonCodec
from flowscope.records import DnsMetric, EnrichedDnsQuery
from flowscope.topics import Topics
from processors.core.dedupe import FirstPerId
from simnode import Cluster, NodeSpec, Pod
from simnode.dns import DnsServerProcess, PodResolvConf, kubernetes_search, render

WINDOW_S = 3.0
RULES = {
    "default": {"rcode": "NXDOMAIN"},
    "names": {"web.shop.svc.cluster.local": {"addrs": ["fd00:10:96::33"]}},
}
CLIENT_WL, SERVER_WL = "shop/Deployment/frontend", "kube-system/Deployment/coredns"


def test_dns_over_ipv6_flows_to_dns_metrics(
    root_required: None, kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    nodes = [NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]
    with Cluster(nodes, dual_stack=True, pod_wiring="routed") as cluster:
        dns = cluster.add_pod("coredns", node="node-a1", namespace="kube-system")
        app = cluster.add_pod("frontend", node="node-b1", namespace="shop")
        assert dns.ip6 is not None and app.ip6 is not None
        server = DnsServerProcess(dns, RULES, host="::")
        conf = PodResolvConf(
            app,
            render(
                [dns.ip6], kubernetes_search("shop"), ndots=5, options=["timeout:1", "attempts:1"]
            ),
        )
        publish_metadata(kafka_bootstrap, topics, cluster.write_objects(tmp_path / "objects.yaml"))
        settings = PipelineSettings(
            bootstrap=kafka_bootstrap,
            topics=topics,
            node_name="sim-host",
            log_dir=tmp_path / "logs",
            window_s=WINDOW_S,
            grace_s=1.0,
            collector_args=("--dns-enabled", "true", "--dns-timeout-seconds", "1"),
            processor_args=("--dns-grace-seconds", "2.5"),
        )
        enriched_reader = TopicReader(kafka_bootstrap, topics.enriched_dns)
        metrics_reader = TopicReader(kafka_bootstrap, topics.metrics_dns)
        try:
            with running_pipeline(settings):
                # AAAA only: "web" is found by its first search expansion (1 query); "nope"
                # is tried with the 3 expansions of ns shop, then as itself (4 NXDOMAIN).
                resolve = Pod.python("simnode.dns", "resolve", "--family", "inet6", "web", "nope")
                out = json.loads(app.run(conf.command(resolve)).stdout)
                assert out[0]["addrs"] == ["fd00:10:96::33"], out

                def asked(e: EnrichedDnsQuery) -> bool:
                    return e.client.pod_uid == app.uid and e.observer_role == "client"

                enriched = [
                    e
                    for e in enriched_reader.read_until(
                        JsonCodec(EnrichedDnsQuery),
                        lambda es: sum(map(asked, es)) >= 5,
                        timeout_s=60,
                    )
                    if e.client.pod_uid == app.uid
                ]
                dedupe = FirstPerId()
                codec = JsonCodec(DnsMetric)

                def ours(values: list[bytes]) -> list[DnsMetric]:
                    ms = dedupe.keep(codec.decode(v) for v in values)
                    pair = (CLIENT_WL, SERVER_WL)
                    return [m for m in ms if (m.client_workload, m.server) == pair]

                metrics: list[DnsMetric] = []
                deadline = time.monotonic() + 60
                while sum(m.queries for m in metrics) < 5 and time.monotonic() < deadline:
                    metrics += ours(metrics_reader.read(1.0))
                time.sleep(WINDOW_S + 2)  # a double count would show up in the next windows
                metrics += ours(metrics_reader.read(2.0))
        finally:
            enriched_reader.close()
            metrics_reader.close()
            received = server.stop()

    assert sum(received.values()) == 5, received
    client_side = [e for e in enriched if e.observer_role == "client"]
    assert len(client_side) == 5, client_side
    for e in client_side:
        assert (e.client.address, e.server.address) == (app.ip6, dns.ip6), e
        assert (e.client.workload_name, e.server.pod_uid) == ("frontend", dns.uid), e
        assert e.server_class == "cluster_dns" and e.peer_class == "cross_zone", e
    assert sorted(e.search_expansion for e in client_side) == [False, True, True, True, True]

    def total(field: str) -> int:
        return sum(getattr(m, field) for m in metrics)

    rcodes: dict[str, int] = {}
    for m in metrics:
        for rcode, n in m.rcodes.items():
            rcodes[rcode] = rcodes.get(rcode, 0) + n
    assert total("queries") == 5, metrics
    assert rcodes == {"NOERROR": 1, "NXDOMAIN": 4}
    assert (total("search_expansions"), total("search_noise"), total("failed")) == (4, 3, 1)
