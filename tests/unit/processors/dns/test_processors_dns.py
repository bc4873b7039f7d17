"""DNS metrics (processors/dns/): exact counts, noise apart from failures, percentiles within
the sketch's error, each query once, alerts."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

from flowscope.codec import JsonCodec
from flowscope.records import AlertEvent, DeadLetter, DnsMetric, Endpoint, EnrichedDnsQuery
from processors.__main__ import main
from processors.core.alerts import AlertRule, load_rules
from processors.core.stage import Source
from processors.cost.prices import load_price_table
from processors.dns.aggregate import DnsAggregator, NameGroups, dns_metrics, failure_reason
from processors.dns.processor import DnsProcessor
from processors.tcp.processor import ConnectionProcessor

REPO = Path(__file__).resolve().parents[4]
S = 1_000_000_000
T0 = 1_700_000_000 * S
W = 10 * S
WEB = Endpoint(
    address="10.1.0.5",
    port=40000,
    attribution="pod",
    namespace="shop",
    workload_kind="Deployment",
    workload_name="web",
    zone="z-a",
)
API = Endpoint(
    address="10.1.0.6",
    port=40000,
    attribution="pod",
    namespace="shop",
    workload_kind="Deployment",
    workload_name="api",
    zone="z-a",
)
COREDNS = Endpoint(
    address="10.1.0.53",
    port=53,
    attribution="pod",
    namespace="kube-system",
    workload_kind="Deployment",
    workload_name="coredns",
    service="kube-dns",
    zone="z-b",
)
OUTSIDE = Endpoint(address="198.51.100.7", port=5353, attribution="external")
WEB_KEY, DNS_KEY = "shop/Deployment/web", "kube-system/Deployment/coredns"
CODEC = JsonCodec(EnrichedDnsQuery)


def q(t: int, rcode: str | None = "NOERROR", **changes: Any) -> EnrichedDnsQuery:
    base = EnrichedDnsQuery(
        time_ns=t,
        response_time_ns=t + 1000,
        observer_node="n1",
        observer_role="client",
        client_observed=True,
        transport="udp",
        network_type="ipv4",
        client=WEB,
        server=COREDNS,
        server_class="cluster_dns",
        peer_class="cross_zone",
        txid=1,
        query_name="api.example.com",
        query_type="A",
        outcome="answered",
        rcode=rcode,
        answer_count=1,
        latency_us=1000,
        search_expansion=False,
        asked_name="api.example.com",
    )
    return replace(base, **changes)


def one_window(records: list[EnrichedDnsQuery]) -> list[DnsMetric]:
    agg = DnsAggregator(W, 0)
    for r in records:
        agg.add(0, r)
    closed = agg.close_ready(T0 + 10 * W)
    return [m for w in closed for m in dns_metrics(w)]


def test_exact_counts_per_rcode_and_noise_apart_from_failures() -> None:
    t = T0 + 1
    expansion = {"search_expansion": True, "query_name": "api.example.com.shop.svc.cluster.local"}
    records = (
        [q(t) for _ in range(50)]
        + [q(t, "NXDOMAIN", **expansion) for _ in range(30)]  # search noise
        + [q(t, "NXDOMAIN") for _ in range(4)]  # the final name: a real failure
        + [q(t, "SERVFAIL") for _ in range(3)]
        + [q(t, "REFUSED") for _ in range(2)]
        + [q(t, None, outcome="timeout", latency_us=None, response_time_ns=None) for _ in range(5)]
        + [q(t, None, outcome="malformed", malformed_reason="bad_pointer") for _ in range(1)]
        + [q(t, "NOERROR", **expansion, answer_count=0)]  # NODATA on an expansion: not noise
        + [q(t, "SERVFAIL", **expansion)]  # an expansion that failed: a failure
        + [q(t, "NOERROR", attempts=3, response_truncated=True)]
    )
    [m] = one_window(records)
    assert (m.client_workload, m.server, m.server_class, m.name_group) == (
        WEB_KEY,
        DNS_KEY,
        "cluster_dns",
        "example.com",
    )
    assert m.server_service == "kube-dns" and m.client_namespace == "shop"
    assert m.queries == 98
    assert m.rcodes == {"NOERROR": 52, "NXDOMAIN": 34, "REFUSED": 2, "SERVFAIL": 4}
    assert (m.answered, m.timeouts, m.malformed) == (92, 5, 1)
    assert m.answered + m.timeouts + m.malformed == m.queries
    assert m.failures == {"NXDOMAIN": 4, "REFUSED": 2, "SERVFAIL": 4, "malformed": 1, "timeout": 5}
    assert m.failed == 16
    assert (m.search_expansions, m.search_noise) == (32, 30)
    assert m.failure_rate == pytest.approx(16 / (98 - 30))
    assert (m.retransmissions, m.truncated) == (2, 1)
    # Only answered queries feed the latency sketch (the malformed one carried a latency).
    assert m.latency_sketch is not None and m.latency_sketch["count"] == 92


def test_failure_reasons() -> None:
    assert failure_reason(q(1, "NOERROR")) is None
    assert failure_reason(q(1, "NXDOMAIN")) == "NXDOMAIN"
    assert failure_reason(q(1, "NXDOMAIN", search_expansion=True)) is None
    # Unknown expansion status (server side, unreadable resolv.conf): counted as a failure.
    assert failure_reason(q(1, "NXDOMAIN", search_expansion=None)) == "NXDOMAIN"
    assert failure_reason(q(1, "FORMERR")) is None
    assert failure_reason(q(1, None, outcome="timeout")) == "timeout"


def test_percentiles_within_the_sketch_error() -> None:
    rng = random.Random(6)
    latencies = [int(rng.lognormvariate(7, 1.2)) + 1 for _ in range(5000)]
    [m] = one_window([q(T0 + i, latency_us=v) for i, v in enumerate(latencies)])
    ordered = sorted(latencies)
    for p, got in ((0.5, m.latency_p50_us), (0.9, m.latency_p90_us), (0.99, m.latency_p99_us)):
        exact = ordered[math.floor(p * (len(ordered) - 1))]
        assert got is not None and abs(got - exact) <= 0.01 * exact, (p, got, exact)


def test_each_query_counted_once() -> None:
    t = T0 + 5
    both_client = q(t, "SERVFAIL")
    both_server = replace(both_client, observer_role="server", observer_node="n2")
    # A client no collector saw (outside the cluster): only the server reports it.
    only_server = q(t, "NOERROR", observer_role="server", client_observed=False, client=OUTSIDE)
    agg = DnsAggregator(W, 0)
    for r in (both_client, both_server, only_server):
        agg.add(0, r)
    assert agg.counters.duplicates_skipped == 1 and agg.counters.counted == 2
    metrics = {m.client_workload: m for w in agg.close_ready(T0 + 5 * W) for m in dns_metrics(w)}
    assert metrics[WEB_KEY].queries == 1 and metrics[WEB_KEY].failed == 1
    assert metrics["external/198.51.100.7"].queries == 1
    assert metrics["external/198.51.100.7"].failed == 0


def test_event_time_windows_late_records_and_ids() -> None:
    agg = DnsAggregator(W, 2 * S)
    assert agg.add(0, q(T0 + 1)) == T0
    assert agg.add(0, q(T0 + W + 1)) == T0 + W
    assert agg.add(1, q(T0 + 2)) == T0
    assert agg.close_ready(T0 + W + 2 * S - 1) == []  # end + grace not reached
    first = agg.close_ready(T0 + W + 2 * S)
    assert [(w.partition, w.start_ns) for w in first] == [(0, T0), (1, T0)]
    assert agg.add(0, q(T0 + 3)) is None and agg.counters.late_dropped == 1
    assert agg.close_ready(T0 + W + 2 * S) == []  # published once
    ids = [m.metric_id for w in first for m in dns_metrics(w)]
    assert len(set(ids)) == 2 and all(i.startswith(f"dns|{T0}|") for i in ids)
    assert agg.drop_partitions([0]) == 1 and agg.open_windows() == []


def test_invalid_records_are_rejected_unchanged() -> None:
    agg = DnsAggregator(W, 0)
    with pytest.raises(ValueError, match="latency_us=-5"):
        agg.add(0, q(T0, latency_us=-5))
    assert agg.counters.rejected == 1 and agg.open_windows() == []


@pytest.mark.parametrize(
    ("names", "query_name", "asked", "privacy", "group"),
    [
        (
            NameGroups(),
            "api.example.com.shop.svc.cluster.local",
            "api.example.com",
            "plain",
            "example.com",
        ),
        (NameGroups(), "db.shop.svc.cluster.local", None, "plain", "db.shop.svc.cluster.local"),
        (NameGroups(labels=3), "a.b.example.co.uk", None, "plain", "example.co.uk"),
        (
            NameGroups(cluster_domain="corp.internal"),
            "db.shop.svc.corp.internal",
            None,
            "plain",
            "db.shop.svc.corp.internal",
        ),
        (
            NameGroups("asked"),
            "api.example.com.svc.cluster.local",
            "Api.Example.com",
            "plain",
            "api.example.com",
        ),
        (
            NameGroups("name"),
            "api.example.com.svc.cluster.local",
            "api.example.com",
            "plain",
            "api.example.com.svc.cluster.local",
        ),
        (NameGroups("none"), "x.y", None, "plain", "*"),
        (NameGroups(), "9f2c", "9f2c", "hashed", "(hashed)"),
        (NameGroups("asked"), "9f2c", "77aa", "hashed", "77aa"),
        (NameGroups(), None, None, "dropped", "(dropped)"),
        (NameGroups(), None, None, "plain", "(none)"),
    ],
)
def test_name_groups(
    names: NameGroups, query_name: str | None, asked: str | None, privacy: str, group: str
) -> None:
    record = q(T0, query_name=query_name, asked_name=asked, name_privacy=privacy)
    assert names.group(record) == group


def test_bad_name_grouping_fails_naming_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="suffix"):
        NameGroups("tld")  # type: ignore[arg-type]
    assert main(["worker", "--dns-name-group", "tld"]) == 2
    assert "suffix, asked, name, none" in capsys.readouterr().err


# -- the processor: messages in, outputs out ---------------------------------------------------

SHIPPED = [r for r in load_rules(REPO / "config" / "alerts.yaml") if r.metric.startswith("dns.")]


def feed(p: DnsProcessor, window: int, total: int, failed: int, noise: int = 0) -> None:
    batch = []
    for i in range(total):
        rcode = "SERVFAIL" if i < failed else "NOERROR"
        batch.append(q(T0 + window * W + i, rcode))
    batch += [q(T0 + window * W, "NXDOMAIN", search_expansion=True) for _ in range(noise)]
    p.handle(CODEC.encode_batch(batch), Source("t.enriched.dns", 0, window, None), T0)


def close(p: DnsProcessor, window: int) -> tuple[list[DnsMetric], list[AlertEvent]]:
    out = p.close_ready(T0 + (window + 1) * W + 1)
    metrics = [JsonCodec(DnsMetric).decode(o.value) for o in out if o.kind == "dns"]
    alerts = [JsonCodec(AlertEvent).decode(o.value) for o in out if o.kind == "alerts"]
    return metrics, alerts


def test_shipped_dns_rule_fires_after_two_windows_and_resolves_once() -> None:
    assert [r.name for r in SHIPPED] == ["dns-failure-rate"]
    p = DnsProcessor(W, 0, 0, rules=SHIPPED)
    # Window 0: 3 failures of 40 (7.5%) -> breach 1 of 2. Lots of search noise that would
    # dilute the rate below 5% if it were counted as queries: it is not.
    feed(p, 0, 40, 3, noise=200)
    metrics, alerts = close(p, 0)
    assert alerts == [] and metrics[0].failure_rate == pytest.approx(3 / 40)
    feed(p, 1, 40, 4)
    _, alerts = close(p, 1)
    assert [a.status for a in alerts] == ["firing"]
    fired = alerts[0]
    assert fired.rule == "dns-failure-rate" and fired.metric == "dns.failure_rate"
    assert fired.group == {"client_workload": WEB_KEY, "server": DNS_KEY}
    assert fired.affected_workloads == [DNS_KEY, WEB_KEY]
    assert [e["value"] for e in fired.evidence] == [pytest.approx(3 / 40), pytest.approx(0.1)]
    assert [e["queries"] for e in fired.evidence] == [40, 40]
    feed(p, 2, 40, 5)
    assert close(p, 2)[1] == []  # still firing: nothing sent
    feed(p, 3, 40, 0)
    _, alerts = close(p, 3)
    assert [(a.status, a.alert_id) for a in alerts] == [("resolved", fired.alert_id)]
    # Too few queries never alert (min_connections: 20 queries).
    feed(p, 4, 10, 10)
    feed(p, 5, 10, 10)
    assert close(p, 5)[1] == []


def test_quiet_stream_resolves_a_firing_dns_alert() -> None:
    rule = AlertRule(
        name="d", metric="dns.failure_rate", group_by=("client_workload",), threshold=0.1
    )
    p = DnsProcessor(W, 0, 0, rules=[rule])
    feed(p, 0, 10, 5)
    assert [a.status for a in close(p, 0)[1]] == ["firing"]
    # No DNS traffic at all: the next closed (empty) window resolves it.
    out = p.close_ready(T0 + 3 * W)
    assert [JsonCodec(AlertEvent).decode(o.value).status for o in out] == ["resolved"]


def test_processor_dead_letters_bad_records_and_counts() -> None:
    p = DnsProcessor(W, 0, 10 * S)
    newest, dead = p.handle(b"{not json", Source("t.enriched.dns", 2, 9, b"k"), T0)
    assert newest is None and len(dead) == 1
    letter = JsonCodec(DeadLetter).decode(dead[0])
    assert (letter.stage, letter.partition, letter.offset) == ("processors.dns.aggregate", 2, 9)
    good, bad = q(T0 + 1), q(T0 + 2, latency_us=-1)
    newest, dead = p.handle(CODEC.encode_batch([good, bad]), Source("t", 0, 1, None), T0)
    assert newest == T0 and len(dead) == 1
    report = p.report()
    assert report["dead_lettered"] == 2 and report["counted"] == 1 and report["rejected"] == 1


def test_tcp_processor_leaves_dns_rules_to_the_dns_processor() -> None:
    prices = load_price_table(REPO / "config" / "prices.yaml")
    rules = load_rules(REPO / "config" / "alerts.yaml")
    tcp = ConnectionProcessor(W, 0, 10 * S, prices, rules)
    assert "dns-failure-rate" not in {r.name for r in tcp.alerts.rules}
    assert "connect-failure-rate" in {r.name for r in tcp.alerts.rules}
    assert [r.name for r in DnsProcessor(W, 0, 10 * S, rules).alerts.rules] == ["dns-failure-rate"]


def test_a_record_of_another_schema_version_is_rejected_not_counted() -> None:
    agg = DnsAggregator(W, 0)
    with pytest.raises(ValueError, match="unsupported schema version schema_version=2"):
        agg.add(0, replace(q(T0), schema_version=2))
    assert agg.counters.rejected == 1 and agg.counters.counted == 0
    assert agg.open_windows() == []
