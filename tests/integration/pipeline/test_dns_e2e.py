"""DNS, end to end: pods resolve through a real DNS server pod (getaddrinfo with a
Kubernetes-style resolv.conf, and raw stub queries) -> cgroup_skb capture -> collector ->
Kafka -> enricher (DNS join) -> Faust DNS metrics. The test knows every query it caused and
checks the published per-window DNS metrics against that truth: counts per rcode, timeouts,
search-path noise apart from real failures, the failure rate, and both ends named."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pipeline_accuracy import AccuracyCheck

from demo.readout import TopicReader
from demo.services import PipelineSettings, publish_metadata, running_pipeline
from flowscope.codec import JsonCodec
from flowscope.records import DnsMetric, EnrichedDnsQuery
from flowscope.topics import Topics
from processors.core.dedupe import FirstPerId
from processors.dns.aggregate import NameGroups
from simnode import Cluster, NodeSpec, Pod
from simnode.dns import DnsServerProcess, PodResolvConf, kubernetes_search, render

WINDOW_S = 3.0
DNS_TIMEOUT_S = 1.0
RULES = {
    "default": {"rcode": "NXDOMAIN"},
    "names": {
        "web.shop.svc.cluster.local": {"addrs": ["10.96.3.3"]},
        "ok.test": {"addrs": ["192.0.2.1"]},
        "broken.test": {"rcode": "SERVFAIL"},
        "silent.test": {"drop": True},
        "tcp-ok.test": {"addrs": ["192.0.2.7"]},
        "tcp-broken.test": {"rcode": "SERVFAIL"},
    },
}
CLIENT_WL, SERVER_WL = "shop/Deployment/frontend", "kube-system/Deployment/coredns"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    nodes = [NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]
    with Cluster(nodes) as c:
        yield c


def test_dns_queries_flow_from_kernel_to_dns_metrics(
    root_required: None, kafka_bootstrap: str, topics: Topics, cluster: Cluster, tmp_path: Path
) -> None:
    dns = cluster.add_pod("coredns", node="node-a1", namespace="kube-system")
    app = cluster.add_pod("frontend", node="node-b1", namespace="shop")
    server = DnsServerProcess(dns, RULES)
    conf = PodResolvConf(app, render([dns.ip], kubernetes_search("shop"), ndots=5))
    publish_metadata(kafka_bootstrap, topics, cluster.write_objects(tmp_path / "objects.yaml"))
    settings = PipelineSettings(
        bootstrap=kafka_bootstrap,
        topics=topics,
        node_name="sim-host",
        log_dir=tmp_path / "logs",
        window_s=WINDOW_S,
        grace_s=1.0,
        collector_args=("--dns-enabled", "true", "--dns-timeout-seconds", str(DNS_TIMEOUT_S)),
        processor_args=("--dns-grace-seconds", str(DNS_TIMEOUT_S + 1.5)),
    )
    enriched_reader = TopicReader(kafka_bootstrap, topics.enriched_dns)
    metrics_reader = TopicReader(kafka_bootstrap, topics.metrics_dns)
    try:
        with running_pipeline(settings):
            # getaddrinfo: "web" is found by its first search expansion (1 query); "nope" is
            # tried with 3 expansions, then as itself: 4 NXDOMAIN, 3 of them search noise.
            out = app.run(conf.command(Pod.python("simnode.dns", "resolve", "web", "nope")))
            assert json.loads(out.stdout)[0]["addrs"] == ["10.96.3.3"]
            stub = Pod.python(
                "simnode.dns",
                "query",
                "--server",
                dns.ip,
                "--timeout-s",
                "2",
                "ok.test",
                "ok.test",
                "ok.test",
                "broken.test",
                "broken.test",
                "silent.test",
            )
            replies = json.loads(app.run(conf.command(stub)).stdout)
            assert [r.get("timeout", False) for r in replies] == [False] * 5 + [True]

            enriched = [
                e
                for e in enriched_reader.read_until(
                    JsonCodec(EnrichedDnsQuery),
                    lambda es: (
                        sum(e.client.pod_uid == app.uid and e.observer_role == "client" for e in es)
                        >= 11
                    ),
                    timeout_s=60,
                )
                if e.client.pod_uid == app.uid
            ]
            dedupe = FirstPerId()
            codec = JsonCodec(DnsMetric)

            def ours(values: list[bytes]) -> list[DnsMetric]:
                ms = dedupe.keep(codec.decode(v) for v in values)
                return [m for m in ms if (m.client_workload, m.server) == (CLIENT_WL, SERVER_WL)]

            metrics: list[DnsMetric] = []
            deadline = time.monotonic() + 60
            while sum(m.queries for m in metrics) < 11 and time.monotonic() < deadline:
                metrics += ours(metrics_reader.read(1.0))
            time.sleep(WINDOW_S + 2)  # a double count would show up in the next windows
            metrics += ours(metrics_reader.read(2.0))
    finally:
        enriched_reader.close()
        metrics_reader.close()
        received = server.stop()

    assert sum(received.values()) == 11, received
    client_side = [e for e in enriched if e.observer_role == "client"]
    assert len(client_side) == 11
    for e in client_side:
        assert (e.client.workload_name, e.client.zone) == ("frontend", "zone-b"), e
        assert (e.server.pod_uid, e.server.zone) == (dns.uid, "zone-a"), e
        assert e.server_class == "cluster_dns" and e.peer_class == "cross_zone", e

    def total(field: str) -> int:
        return sum(getattr(m, field) for m in metrics)

    rcodes: dict[str, int] = {}
    for m in metrics:
        for rcode, n in m.rcodes.items():
            rcodes[rcode] = rcodes.get(rcode, 0) + n
    assert total("queries") == 11, metrics
    assert rcodes == {"NOERROR": 4, "NXDOMAIN": 4, "SERVFAIL": 2}
    assert total("timeouts") == 1 and total("malformed") == 0
    assert total("search_expansions") == 4  # web's first expansion + nope's three
    assert total("search_noise") == 3
    assert total("failed") == 4  # nope itself, 2 SERVFAIL, 1 timeout
    assert all(m.server_class == "cluster_dns" for m in metrics)
    answered = [m for m in metrics if m.answered]
    assert all(m.latency_p50_us is not None and m.latency_p50_us > 0 for m in answered)

    # Every published latency percentile against the exact one from the records the test
    # holds: the answered client-side queries of that window (event time = query time) and
    # name group (the processors' default grouping).
    accuracy = AccuracyCheck()
    groups = NameGroups()
    for m in metrics:
        latencies = [
            e.latency_us
            for e in client_side
            if e.outcome == "answered"
            and e.latency_us is not None
            and m.window_start_ns <= e.time_ns < m.window_end_ns
            and groups.group(e) == m.name_group
        ]
        accuracy.check(
            f"{m.name_group} window {m.window_start_ns}",
            latencies,
            {0.5: m.latency_p50_us, 0.9: m.latency_p90_us, 0.99: m.latency_p99_us},
            m.latency_sketch,
        )
    assert accuracy.records == sum(rcodes.values()), accuracy.summary()
    print(accuracy.summary())


def test_dns_over_tcp_and_absolute_nxdomain_flow_to_dns_metrics(
    root_required: None, kafka_bootstrap: str, topics: Topics, cluster: Cluster, tmp_path: Path
) -> None:
    """Queries over TCP (as a resolver retries a truncated answer, or ``dig +tcp``) are DNS
    queries like any other: enriched with transport tcp and counted. Absolute names (trailing
    dot) are sent once, never expanded: their NXDOMAIN is a failure, not search noise, also
    for ``gone.shop.svc.cluster.local.``, the same on the wire as the first expansion of
    ``gone`` in namespace shop."""
    dns = cluster.add_pod("coredns", node="node-a1", namespace="kube-system")
    app = cluster.add_pod("frontend", node="node-b1", namespace="shop")
    server = DnsServerProcess(dns, RULES)
    conf = PodResolvConf(app, render([dns.ip], kubernetes_search("shop"), ndots=5))
    publish_metadata(kafka_bootstrap, topics, cluster.write_objects(tmp_path / "objects.yaml"))
    settings = PipelineSettings(
        bootstrap=kafka_bootstrap,
        topics=topics,
        node_name="sim-host",
        log_dir=tmp_path / "logs",
        window_s=WINDOW_S,
        grace_s=1.0,
        collector_args=("--dns-enabled", "true", "--dns-timeout-seconds", str(DNS_TIMEOUT_S)),
        processor_args=("--dns-grace-seconds", str(DNS_TIMEOUT_S + 1.5)),
    )
    absolute = ["gone.shop.svc.cluster.local", "missing.test"]
    want = 4  # two over TCP, one query per absolute name
    enriched_reader = TopicReader(kafka_bootstrap, topics.enriched_dns)
    metrics_reader = TopicReader(kafka_bootstrap, topics.metrics_dns)
    try:
        with running_pipeline(settings):
            stub = Pod.python(
                "simnode.dns",
                "query",
                "--tcp",
                "--server",
                dns.ip,
                "tcp-ok.test",
                "tcp-broken.test",
            )
            replies = json.loads(app.run(conf.command(stub)).stdout)
            assert [r.get("timeout", False) for r in replies] == [False, False], replies
            resolve = Pod.python("simnode.dns", "resolve", *(n + "." for n in absolute))
            assert [r["ok"] for r in json.loads(app.run(conf.command(resolve)).stdout)] == [
                False,
                False,
            ]
            enriched = [
                e
                for e in enriched_reader.read_until(
                    JsonCodec(EnrichedDnsQuery),
                    lambda es: (
                        sum(e.client.pod_uid == app.uid and e.observer_role == "client" for e in es)
                        >= want
                    ),
                    timeout_s=60,
                )
                if e.client.pod_uid == app.uid
            ]
            dedupe = FirstPerId()
            codec = JsonCodec(DnsMetric)

            def ours(values: list[bytes]) -> list[DnsMetric]:
                ms = dedupe.keep(codec.decode(v) for v in values)
                return [m for m in ms if (m.client_workload, m.server) == (CLIENT_WL, SERVER_WL)]

            metrics: list[DnsMetric] = []
            deadline = time.monotonic() + 60
            while sum(m.queries for m in metrics) < want and time.monotonic() < deadline:
                metrics += ours(metrics_reader.read(1.0))
            time.sleep(WINDOW_S + 2)  # a double count would show up in the next windows
            metrics += ours(metrics_reader.read(2.0))
    finally:
        enriched_reader.close()
        metrics_reader.close()
        received = server.stop()

    # Exactly one query per name reached the server: nothing expanded, nothing retried.
    assert sum(received.values()) == want, received
    client_side = {e.query_name: e for e in enriched if e.observer_role == "client"}
    assert len(client_side) == want == len([e for e in enriched if e.observer_role == "client"])
    for name, rcode in (("tcp-ok.test", "NOERROR"), ("tcp-broken.test", "SERVFAIL")):
        e = client_side[name]
        assert (e.transport, e.outcome, e.rcode) == ("tcp", "answered", rcode), e
        assert e.server.pod_uid == dns.uid and e.server.port == 53, e
        assert e.latency_us is not None and e.latency_us > 0, e
    assert client_side["tcp-ok.test"].answer_addrs == ["192.0.2.7"]
    for name in absolute:
        e = client_side[name]
        assert (e.transport, e.rcode, e.search_expansion) == ("udp", "NXDOMAIN", False), e

    by_group: dict[str, list[DnsMetric]] = {}
    for m in metrics:
        by_group.setdefault(m.name_group, []).append(m)
    assert sorted(by_group) == sorted(["tcp-ok.test", "tcp-broken.test", *absolute]), metrics

    def total(group: str, field: str) -> int:
        return sum(getattr(m, field) for m in by_group[group])

    assert (total("tcp-ok.test", "queries"), total("tcp-ok.test", "failed")) == (1, 0)
    assert (total("tcp-broken.test", "queries"), total("tcp-broken.test", "failed")) == (1, 1)
    for group in absolute:
        assert total(group, "queries") == total(group, "failed") == 1, by_group[group]
        assert total(group, "search_expansions") == total(group, "search_noise") == 0
        assert [m.failures for m in by_group[group]] == [{"NXDOMAIN": 1}]
        assert [m.failure_rate for m in by_group[group]] == [1.0]
    accuracy = AccuracyCheck()
    groups = NameGroups()
    for m in metrics:
        latencies = [
            e.latency_us
            for e in client_side.values()
            if e.latency_us is not None
            and m.window_start_ns <= e.time_ns < m.window_end_ns
            and groups.group(e) == m.name_group
        ]
        accuracy.check(
            f"{m.name_group} window {m.window_start_ns}",
            latencies,
            {0.5: m.latency_p50_us, 0.9: m.latency_p90_us, 0.99: m.latency_p99_us},
            m.latency_sketch,
        )
    assert accuracy.records == want, accuracy.summary()
