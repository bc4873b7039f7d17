"""Alert rules: firing and resolving at the right windows, once, with evidence."""

from __future__ import annotations

from pathlib import Path

import pytest
from processors_records import T0, S, conn, pod

from flowscope.codec import JsonCodec
from flowscope.records import AlertEvent
from processors.core.alerts import (
    AlertEvaluator,
    AlertRule,
    AlertRuleError,
    load_rules,
    parse_rules,
)
from processors.core.stage import Source
from processors.cost.prices import load_price_table
from processors.tcp.processor import ConnectionProcessor

REPO = Path(__file__).resolve().parents[4]
W = 10 * S


def test_shipped_rules_load() -> None:
    rules = {r.name: r for r in load_rules(REPO / "config" / "alerts.yaml")}
    assert set(rules) == {
        "connect-failure-rate",
        "connect-latency-p99",
        "cross-zone-cost-spike",
        "dns-failure-rate",
    }
    assert rules["cross-zone-cost-spike"].baseline_windows == 6


@pytest.mark.parametrize(
    ("rule", "match"),
    [
        (
            {"name": "a", "metric": "nope", "group_by": ["client_workload"], "threshold": 1},
            "tcp.connect_failure_rate",
        ),
        (
            {"name": "a", "metric": "tcp.rtt_p99_us", "group_by": ["zone"], "threshold": 1},
            "group_by",
        ),
        (
            {
                "name": "a",
                "metric": "tcp.rtt_p99_us",
                "group_by": ["service"],
                "threshold": 1,
                "severity": "panic",
            },
            "critical",
        ),
        (
            {
                "name": "a",
                "metric": "tcp.rtt_p99_us",
                "group_by": ["service"],
                "threshold": 1,
                "for": 3,
            },
            "unknown keys",
        ),
    ],
)
def test_bad_rules_fail_naming_the_valid_values(rule: dict[str, object], match: str) -> None:
    with pytest.raises(AlertRuleError, match=match):
        parse_rules({"rules": [rule]})


def feed(
    p: ConnectionProcessor, window: int, total: int, failed: int, failure: str = "refused"
) -> None:
    web, api = pod("web", "z-a"), pod("api", "z-b", service="api")
    for i in range(total):
        outcome = failure if i < failed else "closed"
        rec = conn(T0 + window * W + i, web, api, outcome=outcome, peer_class="cross_zone")
        p.handle(JsonCodec(type(rec)).encode(rec), Source("t", 0, i, None), T0)


def events_until(p: ConnectionProcessor, window: int) -> list[AlertEvent]:
    out = p.close_ready(T0 + (window + 1) * W + 1)  # closes windows up to `window`
    return [JsonCodec(AlertEvent).decode(o.value) for o in out if o.kind == "alerts"]


def test_failure_rate_fires_after_for_windows_and_resolves_once() -> None:
    rule = AlertRule(
        name="fail",
        metric="tcp.connect_failure_rate",
        group_by=("client_workload", "server_workload"),
        threshold=0.1,
        for_windows=2,
        severity="critical",
        min_connections=10,
    )
    p = ConnectionProcessor(W, 0, 0, load_price_table(REPO / "config/prices.yaml"), [rule])
    plan = [(20, 0), (20, 5), (5, 5), (20, 6), (20, 8), (20, 9), (20, 0), (20, 9)]
    # window:  0 ok, 1 breach, 2 too few conns, 3 breach, 4 breach -> fires, 5 breach (quiet),
    #          6 ok -> resolves, 7 breach (streak of 1, no event)
    got: dict[int, list[AlertEvent]] = {}
    for w, (total, failed) in enumerate(plan):
        feed(p, w, total, failed)
        got[w] = events_until(p, w)
    assert [w for w, evs in got.items() if evs] == [4, 6]
    [fire], [resolve] = got[4], got[6]
    assert fire.status == "firing" and resolve.status == "resolved"
    assert (
        fire.alert_id
        == resolve.alert_id
        == (f"fail|shop/Deployment/web|shop/Deployment/api|{T0 + 3 * W}")
    )
    assert fire.affected_workloads == ["shop/Deployment/api", "shop/Deployment/web"]
    assert [e["value"] for e in fire.evidence] == [0.3, 0.4]
    assert [e["window_start_ns"] for e in fire.evidence] == [T0 + 3 * W, T0 + 4 * W]
    assert resolve.evidence[0]["value"] == 0.0 and resolve.window_start_ns == T0 + 6 * W
    assert resolve.evidence[0]["reason"] == "not above the threshold (0 <= 0.1)"
    assert fire.severity == "critical" and fire.group["server_workload"] == "shop/Deployment/api"


def test_a_firing_alert_resolves_when_traffic_stops() -> None:
    rule = AlertRule(
        name="fail", metric="tcp.connect_failure_rate", group_by=("server_workload",), threshold=0.1
    )
    p = ConnectionProcessor(W, 0, 0, load_price_table(REPO / "config/prices.yaml"), [rule])
    feed(p, 0, 10, 10)
    assert [e.status for e in events_until(p, 0)] == ["firing"]
    [resolved] = events_until(p, 1)  # no traffic in window 1: resolves there, once
    assert (resolved.status, resolved.window_start_ns) == ("resolved", T0 + W)
    assert resolved.evidence[0]["reason"] == "no traffic"
    assert events_until(p, 2) == []
    assert p.alerts.firing() == []
    assert p.alerts.resolved == 1


def test_a_window_too_small_to_judge_resolves_and_says_so() -> None:
    rule = AlertRule(
        name="fail",
        metric="tcp.connect_failure_rate",
        group_by=("server_workload",),
        threshold=0.1,
        min_connections=10,
    )
    p = ConnectionProcessor(W, 0, 0, load_price_table(REPO / "config/prices.yaml"), [rule])
    feed(p, 0, 10, 10)
    assert [e.status for e in events_until(p, 0)] == ["firing"]
    feed(p, 1, 4, 4)  # still all failing, but 4 connections: below min_connections
    [resolved] = events_until(p, 1)
    assert resolved.status == "resolved"
    assert resolved.evidence[0]["value"] == 1.0  # the value is shown as it was...
    assert resolved.evidence[0]["reason"] == "too few to judge (4 < 10)"  # ...and why


def test_cost_spike_compares_with_the_baseline() -> None:
    rule = AlertRule(
        name="spike",
        metric="cost.cross_zone_usd",
        group_by=("source_workload",),
        threshold=3.0,
        baseline_windows=2,
        min_value=0.01,
    )
    ev = AlertEvaluator([rule])
    from flowscope.records import CostPairMetric

    def cost(usd: float, cls: str = "cross_zone") -> CostPairMetric:
        return CostPairMetric(
            metric_id="x",
            window_start_ns=0,
            window_end_ns=1,
            source_partition=0,
            source_workload="a",
            destination_workload="b",
            source_namespace=None,
            destination_namespace=None,
            source_zone="z1",
            destination_zone="z2",
            cost_class=cls,
            priced=True,
            cloud="aws",
            connections=1,
            bytes_source_to_destination=1,
            bytes_destination_to_source=0,
            cost_usd=usd,
            cost_usd_source=usd,
            cost_usd_destination=0.0,
        )

    values = [1.0, 1.0, 2.5, 9.0, 1.0]  # baseline at w3 = mean(1.0, 2.5) = 1.75 -> 5.1x
    out = [
        ev.evaluate(w * W, (w + 1) * W, [], [cost(v), cost(50.0, "same_zone")], 0)
        for w, v in enumerate(values)
    ]
    assert [[e.status for e in evs] for evs in out] == [[], [], [], ["firing"], ["resolved"]]
    assert out[3][0].evidence[0]["baseline"] == 1.75
    assert out[3][0].evidence[0]["raw_value"] == 9.0


def test_application_connect_timeouts_fire_the_failure_rate_and_cancels_do_not() -> None:
    rule = AlertRule(
        name="fail",
        metric="tcp.connect_failure_rate",
        group_by=("server_workload",),
        threshold=0.1,
        min_connections=10,
    )
    p = ConnectionProcessor(W, 0, 0, load_price_table(REPO / "config/prices.yaml"), [rule])
    feed(p, 0, 20, 20, failure="cancelled")  # all cancelled (happy eyeballs): no failure
    assert events_until(p, 0) == []
    feed(p, 1, 20, 5, failure="connect_timeout")  # 5 of 20 gave up waiting for a SYN-ACK
    [fired] = events_until(p, 1)
    assert (fired.status, [e["value"] for e in fired.evidence]) == ("firing", [0.25])
    feed(p, 2, 20, 20, failure="cancelled")
    assert [e.status for e in events_until(p, 2)] == ["resolved"]
