"""Internet servers named by DNS, end to end: pods resolve names from a DNS server pod
(getaddrinfo, real UDP), then connect to "internet" addresses served by a host outside the
cluster's metadata -> BPF -> collector -> Kafka -> enricher (DNS names joined to TCP) ->
processors -> cost per destination domain. Checked: a name with two addresses, an address
shared by two names (the later lookup wins), a TTL expiry, a connection with no prior lookup
(the pod's own, and the node's fallback), and dollars per domain exactly."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from demo.readout import TopicReader
from demo.services import PipelineSettings, publish_metadata, running_pipeline
from flowscope.codec import JsonCodec
from flowscope.records import (
    CostRollupMetric,
    EnrichedDnsQuery,
    EnrichedTcpConnection,
    TcpLatencyMetric,
)
from flowscope.topics import Topics
from processors.core.dedupe import FirstPerId
from simnode import Cluster, NodeSpec, Pod
from simnode.dns import DnsServerProcess, PodResolvConf, kubernetes_search, render

PORT = 443
SEND_BYTES = 150_000  # client -> server per connection: the priced egress
REPLY_BYTES = 2_000
SHORT_TTL_S = 4
WINDOW_S = 3.0
GRACE_S = 2.0
USD_PER_GB_EGRESS = Decimal("0.09")  # config/prices.yaml, aws, internet sent


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    nodes = [NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]
    with Cluster(nodes) as c:
        yield c


def test_internet_servers_are_named_by_dns_and_costed_per_domain(
    root_required: None, kafka_bootstrap: str, topics: Topics, cluster: Cluster, tmp_path: Path
) -> None:
    dns = cluster.add_pod("coredns", node="node-a1", namespace="kube-system")
    app = cluster.add_pod("frontend", node="node-b1", namespace="shop")
    # Another pod of the same collector's node, which never resolves anything itself.
    batch = cluster.add_pod("batch", node="node-b1", namespace="shop")
    net, addrs = cluster.add_internet_host("internet", node="node-a1", count=7)
    api1, api2, cdn, short, unasked, s3a, s3b = addrs
    rules = {
        "default": {"rcode": "NXDOMAIN"},
        "names": {
            "api.example.com": {"addrs": [api1, api2], "ttl_s": 300},
            "cdn-a.example.net": {"addrs": [cdn], "ttl_s": 300},
            "cdn-b.example.net": {"addrs": [cdn], "ttl_s": 300},
            "short.example.org": {"addrs": [short], "ttl_s": SHORT_TTL_S},
            "b1.s3.amazonaws.com": {"addrs": [s3a], "ttl_s": 300},
            "b2.s3.amazonaws.com": {"addrs": [s3b], "ttl_s": 300},
        },
    }
    server = DnsServerProcess(dns, rules)
    conf = PodResolvConf(app, render([dns.ip], kubernetes_search("shop"), ndots=5))
    publish_metadata(kafka_bootstrap, topics, cluster.write_objects(tmp_path / "objects.yaml"))
    settings = PipelineSettings(
        bootstrap=kafka_bootstrap,
        topics=topics,
        node_name="sim-host",
        log_dir=tmp_path / "logs",
        window_s=WINDOW_S,
        grace_s=GRACE_S,
        collector_args=("--dns-enabled", "true"),
    )
    dns_reader = TopicReader(kafka_bootstrap, topics.enriched_dns)
    tcp_reader = TopicReader(kafka_bootstrap, topics.enriched_tcp)
    cost_reader = TopicReader(kafka_bootstrap, topics.metrics_cost_rollups)
    latency_reader = TopicReader(kafka_bootstrap, topics.metrics_tcp_latency)
    dns_seen: list[EnrichedDnsQuery] = []
    # Each connection made, in order: (client pod, address, the name the rules say it has).
    made: list[tuple[Pod, str, str | None]] = []

    def resolve(name: str) -> EnrichedDnsQuery:
        """Resolve in the app pod; return once the enricher has joined the answer (the
        connections that follow must find it indexed: see enricher/join/dnsnames.py)."""
        out = app.run(conf.command(Pod.python("simnode.dns", "resolve", name + ".")))
        assert json.loads(out.stdout)[0]["ok"], out.stdout

        def mine(e: EnrichedDnsQuery) -> bool:
            return (e.client.pod_uid, e.observer_role, e.query_name) == (app.uid, "client", name)

        dns_seen.extend(
            dns_reader.read_until(
                JsonCodec(EnrichedDnsQuery), lambda es: any(map(mine, es)), timeout_s=60
            )
        )
        return next(e for e in dns_seen if mine(e))

    def connect(pod: Pod, addr: str, expected: str | None) -> None:
        summary = pod.run_client(
            addr, PORT, count=1, send_bytes=SEND_BYTES, expect_reply_bytes=REPLY_BYTES
        )
        assert summary.completed == 1, summary
        made.append((pod, addr, expected))

    try:
        with running_pipeline(settings):
            proc = net.start_server(PORT, reply_bytes=REPLY_BYTES, request_bytes=SEND_BYTES)
            net.wait_listening(PORT, proc=proc)
            api = resolve("api.example.com")
            assert sorted(api.answer_addrs) == sorted([api1, api2])
            connect(app, api1, "api.example.com")  # one name, two addresses
            connect(app, api2, "api.example.com")
            connect(batch, api1, "api.example.com")  # no lookup of its own: the node's
            resolve("cdn-a.example.net")
            connect(app, cdn, "cdn-a.example.net")  # one address, two names: the later wins
            resolve("cdn-b.example.net")
            connect(app, cdn, "cdn-b.example.net")
            answered = resolve("short.example.org")
            connect(app, short, "short.example.org")
            assert answered.response_time_ns is not None
            expiry_s = answered.response_time_ns / 1e9 + SHORT_TTL_S
            time.sleep(max(0.0, expiry_s - time.time()) + 1.0)
            connect(app, short, None)  # the answer's TTL is over
            connect(app, unasked, None)  # nobody ever resolved this address
            resolve("b1.s3.amazonaws.com")
            resolve("b2.s3.amazonaws.com")
            connect(app, s3a, "b1.s3.amazonaws.com")
            connect(app, s3b, "b2.s3.amazonaws.com")
            net.stop_server(proc)

            def ours(e: EnrichedTcpConnection) -> bool:
                return e.observer_role == "client" and e.server.address in addrs

            enriched = [
                e
                for e in tcp_reader.read_until(
                    JsonCodec(EnrichedTcpConnection),
                    lambda es: sum(map(ours, es)) >= len(made),
                    timeout_s=60,
                )
                if ours(e)
            ]

            want = _expected_costs(made)
            dedupe, codec = FirstPerId(), JsonCodec(CostRollupMetric)
            rollups: list[CostRollupMetric] = []
            deadline = time.monotonic() + WINDOW_S + GRACE_S + 60
            while time.monotonic() < deadline and not _covers(rollups, want):
                rollups += dedupe.keep(codec.decode(v) for v in cost_reader.read(1.0))
            time.sleep(WINDOW_S + GRACE_S + 1)  # a double count would show up in later windows
            rollups += dedupe.keep(codec.decode(v) for v in cost_reader.read(2.0))
            latency = [
                m
                for m in FirstPerId().keep(
                    JsonCodec(TcpLatencyMetric).decode(v) for v in latency_reader.read(2.0)
                )
                if m.client_workload == "shop/Deployment/frontend"
            ]
    finally:
        for reader in (dns_reader, tcp_reader, cost_reader, latency_reader):
            reader.close()
        server.stop()

    # Each connection in the order made (one per client port), named as the rules say.
    assert len(enriched) == len(made), enriched
    got = sorted(enriched, key=lambda e: e.start_time_ns)
    for e, (pod, addr, expected) in zip(got, made, strict=True):
        assert (e.client.pod_uid, e.server.address) == (pod.uid, addr), e
        assert e.server.attribution == "external" and e.peer_class == "internet", e
        domain = None if e.server_domain is msgspec.UNSET else e.server_domain
        assert domain == expected, (e, expected)
        assert e.bytes_client_to_server == SEND_BYTES, e

    totals = _domain_totals(rollups)
    for name, (usd, sent) in want.items():
        if name == "unnamed":
            # The collector sees the whole machine: other internet traffic may add to it.
            assert totals[name][0] >= usd and totals[name][1] >= sent, (name, totals)
        else:
            assert totals[name] == (usd, sent), (name, totals[name], usd, sent)
    assert "b1.s3.amazonaws.com" not in totals  # folded into its registered suffix

    # Latency per domain: both of api.example.com's addresses are one server.
    api_latency = [m for m in latency if m.server_workload == "external/api.example.com"]
    assert sum(m.connections for m in api_latency) == 2, latency
    assert all(m.server_domain == "api.example.com" for m in api_latency)
    assert not any(m.server_workload.endswith(api1) for m in latency), latency


def _expected_costs(made: list[tuple[Pod, str, str | None]]) -> dict[str, tuple[float, int]]:
    """Dollars (as published, rounded once to 1e-9) and bytes sent per domain group."""
    sent: dict[str, int] = defaultdict(int)
    for _pod, _addr, name in made:
        group = "unnamed" if name is None else name
        if group.endswith(".s3.amazonaws.com"):
            group = "s3.amazonaws.com"
        sent[group] += SEND_BYTES
    return {
        g: (float((n * USD_PER_GB_EGRESS / 10**9).quantize(Decimal("1e-9"))), n)
        for g, n in sent.items()
    }


def _domain_totals(rollups: list[CostRollupMetric]) -> dict[str, tuple[float, int]]:
    usd: dict[str, Decimal] = defaultdict(Decimal)
    sent: dict[str, int] = defaultdict(int)
    for r in rollups:
        if r.scope == "domain":
            usd[r.name] += Decimal(str(r.cost_usd))
            sent[r.name] += r.bytes_sent
    return {n: (float(usd[n].quantize(Decimal("1e-9"))), sent[n]) for n in usd}


def _covers(rollups: list[CostRollupMetric], want: dict[str, tuple[float, int]]) -> bool:
    totals = _domain_totals(rollups)
    return all(totals.get(n, (0.0, 0))[1] >= sent for n, (_usd, sent) in want.items())
