"""Cross-zone cost: classes, directions, roll-ups, dollars exact to the cent."""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path

import pytest
from processors_records import T0, S, conn, external, pod

from processors.cost.prices import PriceTableError, load_price_table, parse_price_table
from processors.cost.records import cost_metrics
from processors.tcp.connections import ConnectionAggregator

REPO = Path(__file__).resolve().parents[4]
PRICES = REPO / "config" / "prices.yaml"
W = 10 * S


def closed(agg: ConnectionAggregator) -> list:  # type: ignore[type-arg]
    return agg.close_ready(T0 + 10_000 * S)


def test_shipped_table_states_units_and_has_every_cloud() -> None:
    for cloud in ("aws", "gcp", "azure", "custom"):
        table = load_price_table(PRICES, cloud)
        assert table.bytes_per_gb == 10**9
        assert set(table.prices) == {"same_zone", "cross_zone", "cross_region", "internet"}
    aws = load_price_table(PRICES)
    assert aws.cloud == "aws"
    assert aws.prices["cross_zone"].sent == Decimal("0.01") == aws.prices["cross_zone"].received
    assert aws.prices["internet"].sent == Decimal("0.09")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"cloud": "ibm", "clouds": {}}, "aws, gcp, azure, custom"),
        ({"units": {"bytes_per_gb": 1000}, "cloud": "aws"}, "GiB"),
        (
            {"cloud": "aws", "clouds": {"aws": {"moon": {"sent": 1, "received": 0}}}},
            "unknown class",
        ),
        ({"cloud": "aws", "clouds": {"aws": {"internet": {"sent": -1, "received": 0}}}}, ">= 0"),
        ({"cloud": "aws", "clouds": {"aws": {"internet": {"sent": 1}}}}, "received"),
    ],
)
def test_bad_price_tables_fail_naming_the_valid_values(data: object, match: str) -> None:
    with pytest.raises(PriceTableError, match=match):
        parse_price_table(data)


def test_cross_zone_pair_costs_both_ends_and_each_connection_counts_once() -> None:
    table = load_price_table(PRICES, "aws")
    agg = ConnectionAggregator(W, 0)
    web, db = pod("web", "us-east-1a"), pod("db", "us-east-1b")
    # 3 GB up, 1 GB down, reported by both ends: the server copy must not count.
    for role in ("client", "server"):
        agg.add(0, conn(T0, web, db, role=role, c2s=3 * 10**9, s2c=10**9, peer_class="cross_zone"))
    pairs, rollups = cost_metrics(closed(agg)[0], table)
    assert len(pairs) == 1
    p = pairs[0]
    assert (p.source_zone, p.destination_zone, p.cost_class, p.priced) == (
        "us-east-1a",
        "us-east-1b",
        "cross_zone",
        True,
    )
    assert (p.bytes_source_to_destination, p.bytes_destination_to_source) == (3 * 10**9, 10**9)
    # $0.01/GB out + $0.01/GB in, 4 GB crossing: web pays 3*0.01 + 1*0.01, db the same.
    assert (p.cost_usd_source, p.cost_usd_destination, p.cost_usd) == (0.04, 0.04, 0.08)
    by = {(r.scope, r.name): r for r in rollups}
    assert by[("workload", "shop/Deployment/web")].cost_usd == 0.04
    assert by[("workload", "shop/Deployment/db")].bytes_sent == 10**9
    assert by[("namespace", "shop")].cost_usd == 0.08
    assert by[("namespace", "shop")].cost_usd_by_class == {"cross_zone": 0.08}


def test_internet_egress_is_charged_to_the_inside_end_only() -> None:
    table = load_price_table(PRICES, "gcp")
    agg = ConnectionAggregator(W, 0)
    # Inside client uploads 2 GB to the internet and downloads 5 GB (ingress is free).
    agg.add(
        0,
        conn(
            T0, pod("api", "z-a"), external(), c2s=2 * 10**9, s2c=5 * 10**9, peer_class="internet"
        ),
    )
    # An outside client (only the server end observed) downloads 1 GB from us.
    agg.add(
        0,
        conn(
            T0,
            external("198.51.100.7"),
            pod("cdn", "z-a"),
            role="server",
            client_observed=False,
            c2s=10,
            s2c=10**9,
            peer_class="internet",
        ),
    )
    pairs, rollups = cost_metrics(closed(agg)[0], table)
    cost = {p.source_workload: p for p in pairs}
    assert cost["shop/Deployment/api"].cost_usd_source == 0.24  # 2 GB x $0.12
    assert cost["shop/Deployment/api"].cost_usd_destination == 0.0
    assert cost["external/198.51.100.7"].cost_usd_destination == 0.12
    assert cost["external/198.51.100.7"].cost_usd_source == 0.0
    names = {r.name for r in rollups}
    assert "external/203.0.113.9" not in names and "shop/Deployment/cdn" in names


def test_unpriced_classes_are_reported_with_zero_cost() -> None:
    agg = ConnectionAggregator(W, 0)
    agg.add(0, conn(T0, pod("a", None), pod("b", None), c2s=10**12, peer_class="unknown"))
    pairs, _ = cost_metrics(closed(agg)[0], load_price_table(PRICES))
    assert (pairs[0].priced, pairs[0].cost_usd, pairs[0].bytes_source_to_destination) == (
        False,
        0.0,
        10**12,
    )


def test_random_traffic_dollars_match_an_independent_computation_to_the_cent() -> None:
    """Thousands of odd-sized connections over several windows and zone pairs: published
    dollars, summed over windows, equal exact Decimal arithmetic done here to the cent."""
    table = load_price_table(PRICES, "azure")
    rng = random.Random(7)
    agg = ConnectionAggregator(W, 0)
    zones = ["eastus-1", "eastus-2", "westus-1"]
    workloads = [pod(f"w{i}", zones[i % 3]) for i in range(5)]
    price = {
        "same_zone": ("0", "0"),
        "cross_zone": ("0", "0"),
        "cross_region": ("0.02", "0"),
        "internet": ("0.087", "0"),
    }
    truth: dict[str, Decimal] = {}
    for _ in range(3000):
        c, s = rng.choice(workloads), rng.choice([*workloads, external()])
        if s.attribution == "external":
            cls = "internet"
        elif c.zone == s.zone:
            cls = "same_zone"
        elif c.region == s.region:
            cls = "cross_zone"
        else:
            cls = "cross_region"
        c2s, s2c = rng.randrange(0, 3 * 10**9), rng.randrange(0, 10**8)
        agg.add(0, conn(T0 + rng.randrange(0, 5 * W), c, s, c2s=c2s, s2c=s2c, peer_class=cls))
        sent, received = (Decimal(x) for x in price[cls])
        src = (c2s * sent + s2c * received) / 10**9
        dst = 0 if s.attribution == "external" else (s2c * sent + c2s * received) / 10**9
        truth[c.workload_key()] = truth.get(c.workload_key(), Decimal(0)) + src
        truth[s.workload_key()] = truth.get(s.workload_key(), Decimal(0)) + dst
    got: dict[str, float] = {}
    total = 0.0
    for window in closed(agg):
        pairs, rollups = cost_metrics(window, table)
        total += sum(p.cost_usd for p in pairs)
        for r in rollups:
            if r.scope == "workload":
                got[r.name] = got.get(r.name, 0.0) + r.cost_usd
    for name, usd in truth.items():
        if name.startswith("external/"):
            assert usd == 0 and name not in got
            continue
        assert round(got[name], 2) == round(float(usd), 2), name
        assert abs(Decimal(repr(got[name])) - usd) < Decimal("0.000001"), name
    assert round(total, 2) == round(float(sum(truth.values())), 2)
    assert total > 10  # the test moved real money


def test_egress_is_rolled_up_per_domain_group_and_unnamed() -> None:
    table = load_price_table(PRICES, "aws")
    assert table.domain_group("Bucket-1.S3.amazonaws.com.") == "s3.amazonaws.com"
    assert table.domain_group("api.example.com") == "api.example.com"
    assert table.domain_group("x.s3.us-east-1.amazonaws.com") == "s3.us-east-1.amazonaws.com"
    agg = ConnectionAggregator(W, 0)
    api = pod("api", "z-a")
    # Two buckets share one group; one address no DNS answer named; 1 GB each way each.
    for addr, domain in (
        ("52.0.0.1", "b1.s3.amazonaws.com"),
        ("52.0.0.2", "b2.s3.amazonaws.com"),
        ("93.0.0.1", "api.example.com"),
        ("93.0.0.2", None),
    ):
        more = {} if domain is None else {"server_domain": domain}
        agg.add(
            0, conn(T0, api, external(addr), c2s=10**9, s2c=10**9, peer_class="internet", **more)
        )
    _, rollups = cost_metrics(closed(agg)[0], table)
    by = {r.name: r for r in rollups if r.scope == "domain"}
    assert set(by) == {"s3.amazonaws.com", "api.example.com", "unnamed"}
    # Egress $0.09/GB, ingress free: what the inside client pays per destination.
    assert by["s3.amazonaws.com"].cost_usd == 0.18 and by["s3.amazonaws.com"].bytes_sent == 2e9
    assert by["api.example.com"].cost_usd == 0.09 == by["unnamed"].cost_usd
    assert by["unnamed"].bytes_received == 10**9


def test_domain_groups_refuse_inner_wildcards() -> None:
    data = {"cloud": "aws", "clouds": {"aws": {}}, "domain_groups": ["s3.*.amazonaws.com"]}
    with pytest.raises(PriceTableError, match="only lead"):
        parse_price_table(data)


def test_cost_rolls_up_by_pod_and_node_label_adding_up_to_the_total() -> None:
    import msgspec

    data = {
        "cloud": "aws",
        "clouds": {"aws": {"cross_zone": {"sent": 0.01, "received": 0.01}}},
        "rollup_labels": ["team"],
        "rollup_node_labels": ["rack"],
    }
    table = parse_price_table(data)
    agg = ConnectionAggregator(W, 0)
    web = msgspec.structs.replace(
        pod("web", "z-a"), pod_labels={"team": "shop"}, node_labels={"rack": "r1"}
    )
    db = msgspec.structs.replace(pod("db", "z-b"), node_labels={"rack": "r2"})
    agg.add(0, conn(T0, web, db, c2s=3 * 10**9, s2c=10**9, peer_class="cross_zone"))
    _, rollups = cost_metrics(closed(agg)[0], table)
    by = {(r.scope, r.name): r.cost_usd for r in rollups}
    assert by[("label", "team=shop")] == 0.04 == by[("label", "team=(none)")]
    assert by[("node_label", "rack=r1")] == 0.04 == by[("node_label", "rack=r2")]
    assert sum(v for (scope, _), v in by.items() if scope == "label") == 0.08


def test_cost_rolls_up_by_region_of_each_inside_end() -> None:
    agg = ConnectionAggregator(W, 0)
    # pod() puts zone "us-east-1aa" in region "us-east-1"; eu-west-1b in "eu-west-1".
    agg.add(
        0,
        conn(
            T0,
            pod("web", "us-east-1aa"),
            pod("db", "eu-west-1bb"),
            c2s=10**9,
            peer_class="cross_region",
        ),
    )
    agg.add(0, conn(T0, pod("api", "us-east-1bb"), external(), c2s=10**9, peer_class="internet"))
    _, rollups = cost_metrics(closed(agg)[0], load_price_table(PRICES, "aws"))
    by = {r.name: r for r in rollups if r.scope == "region"}
    assert set(by) == {"us-east-1", "eu-west-1"}
    # web sends 1 GB cross-region ($0.02) and api 1 GB to the internet ($0.09); db receives free.
    assert (by["us-east-1"].cost_usd, by["us-east-1"].bytes_sent) == (0.11, 2 * 10**9)
    assert (by["eu-west-1"].cost_usd, by["eu-west-1"].bytes_received) == (0.0, 10**9)


def test_latency_of_a_dns_named_server_is_one_per_domain_over_its_addresses() -> None:
    from processors.tcp.latency import latency_metrics, pair_metrics

    agg = ConnectionAggregator(W, 0)
    api = pod("api", "z-a")
    for addr, rtt in (("52.0.0.1", 1000), ("52.0.0.2", 3000), ("52.0.0.3", 5000)):
        more = {"server_domain": "api.example.com"} if addr != "52.0.0.3" else {}
        agg.add(0, conn(T0, api, external(addr), srtt_us=rtt, peer_class="internet", **more))
    window = closed(agg)[0]
    by = {m.server_workload: m for m in latency_metrics(window)}
    assert set(by) == {"external/api.example.com", "external/52.0.0.3"}
    named = by["external/api.example.com"]
    assert (named.connections, named.server_domain) == (2, "api.example.com")
    assert by["external/52.0.0.3"].server_domain is None
    # The spine's pair totals stay per address.
    assert len(pair_metrics(window)) == 3
