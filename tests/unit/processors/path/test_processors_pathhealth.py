"""Path health per node and zone pair, and the network-at-fault verdict (pure)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
import yaml
from processors_records import T0, S, conn, pod

from flowscope.codec import JsonCodec
from flowscope.records import AlertEvent, Endpoint, EnrichedTcpConnection, PathHealthMetric
from processors.core.alerts import AlertRuleError
from processors.core.sketch import QuantileSketch
from processors.core.stage import Output, Source
from processors.path.health import PathHealthProcessor
from processors.path.verdict import NETWORK_RULE, SERVICE_RULE, VerdictConfig, parse_verdict

WINDOW = 10 * S
D = "shop/Deployment/"  # how a workload is named in metrics and alerts
ROOT = Path(__file__).resolve().parents[4]


def at(workload: str, node: str, zone: str) -> Endpoint:
    return msgspec.structs.replace(pod(workload, zone), node=node)


A_FRONT, A_CART = at("frontend", "node-a", "zone-a"), at("cart", "node-a", "zone-a")
B_CHECKOUT, B_STOCK = at("checkout", "node-b", "zone-b"), at("stock", "node-b", "zone-b")
C_SEARCH = at("search", "node-c", "zone-c")


def healthy(
    t: int, client: Endpoint, server: Endpoint, n: int = 20, rtt: int = 500, **more: object
) -> list[EnrichedTcpConnection]:
    return [
        conn(t + i, client, server, srtt_us=rtt, segs_out=100, **{"retrans_segs": 0, **more})
        for i in range(n)
    ]


def lossy(t: int, client: Endpoint, server: Endpoint, n: int = 20) -> list[EnrichedTcpConnection]:
    return healthy(t, client, server, n, rtt=4000, retrans_segs=10)


def run(
    stage: PathHealthProcessor, records: list[EnrichedTcpConnection], close_at: int
) -> tuple[list[PathHealthMetric], list[AlertEvent]]:
    codec = JsonCodec(EnrichedTcpConnection)
    for r in records:
        stage.handle(codec.encode(r), Source("t", 0, 0, None), close_at)
    outputs: list[Output] = stage.close_ready(close_at)
    metrics = [
        JsonCodec(PathHealthMetric).decode(o.value) for o in outputs if o.kind == "path_health"
    ]
    alerts = [JsonCodec(AlertEvent).decode(o.value) for o in outputs if o.kind == "alerts"]
    return metrics, alerts


def stage(**config: object) -> PathHealthProcessor:
    verdict = VerdictConfig(**{"baseline_windows": 2, "scopes": ("node",), **config})  # type: ignore[arg-type]
    return PathHealthProcessor(WINDOW, 0, 0, verdict)


def test_path_metrics_per_node_and_zone_pair() -> None:
    t = T0
    records = [
        conn(t + 1, A_FRONT, B_CHECKOUT, srtt_us=1000, segs_out=50, retrans_segs=5),
        conn(
            t + 2,
            A_FRONT,
            B_CHECKOUT,
            srtt_us=3000,
            segs_out=50,
            retrans_segs=0,
            syn_retries=2,
            outcome="connect_timeout",
        ),
        conn(t + 3, A_CART, B_STOCK, segs_out=2, outcome="reset_by_peer"),
        conn(t + 4, A_CART, B_STOCK, segs_out=1, outcome="refused", syn_retries=1),
        # Interim: volume counted, connection not; the server's copy of a client-observed
        # connection is the same connection again.
        conn(t + 5, A_FRONT, B_CHECKOUT, segs_out=40, retrans_segs=4, interim=True, outcome="open"),
        conn(t + 6, A_FRONT, B_CHECKOUT, role="server", segs_out=999, retrans_segs=999),
        conn(t + 7, B_CHECKOUT, C_SEARCH, srtt_us=200, segs_out=10),
    ]
    metrics, _ = run(PathHealthProcessor(WINDOW, 0, 0), records, t + 2 * WINDOW)
    by = {(m.scope, m.source, m.destination): m for m in metrics}
    assert set(by) == {
        ("node", "node-a", "node-b"),
        ("node", "node-b", "node-c"),
        ("zone", "zone-a", "zone-b"),
        ("zone", "zone-b", "zone-c"),
    }
    ab = by[("node", "node-a", "node-b")]
    assert ab.connections == 4 and ab.failed_connections == 3
    assert ab.failures == {"connect_timeout": 1, "refused": 1, "reset_by_peer": 1}
    assert (ab.resets, ab.connect_timeouts) == (1, 1)
    assert (ab.syn_retransmits, ab.connections_with_syn_retransmits) == (3, 2)
    assert (ab.retrans_segs, ab.segs_out) == (9, 143)
    assert ab.retransmission_rate == pytest.approx(9 / 143)
    assert ab.rtt_p50_us == pytest.approx(1000, rel=0.02)
    assert ab.rtt_sketch is not None
    rtt = QuantileSketch.from_dict(ab.rtt_sketch)
    assert (rtt.count, rtt.max) == (2, 3000)  # the server's copy is not counted again
    assert ab.services == [f"{D}cart -> {D}stock", f"{D}frontend -> {D}checkout"]
    zone = by[("zone", "zone-a", "zone-b")]
    assert (zone.connections, zone.retrans_segs, zone.segs_out) == (4, 9, 143)
    bc = by[("node", "node-b", "node-c")]
    assert bc.connections == 1 and bc.failed_connections == 0 and bc.rtt_sketch is not None
    assert len({m.metric_id for m in metrics}) == len(metrics)


def _windows(
    s: PathHealthProcessor, per_window: list[list[EnrichedTcpConnection]]
) -> list[list[AlertEvent]]:
    out = []
    for i, records in enumerate(per_window):
        out.append(run(s, records, T0 + (i + 1) * WINDOW + 1)[1])
    return out


def test_several_pairs_on_one_path_degrade_the_network_verdict_fires_and_resolves() -> None:
    s = stage()

    def window(i: int, bad: bool) -> list[EnrichedTcpConnection]:
        t = T0 + i * WINDOW
        on_ab = lossy if bad else healthy
        return [
            *on_ab(t, A_FRONT, B_CHECKOUT),
            *on_ab(t, A_CART, B_STOCK),
            *healthy(t, A_FRONT, C_SEARCH),
        ]

    events = _windows(
        s, [window(0, False), window(1, False), window(2, True), window(3, True), window(4, False)]
    )
    assert events[:2] == [[], []]
    (fired,) = events[2]
    assert (fired.rule, fired.status) == (NETWORK_RULE, "firing")
    assert fired.group == {"scope": "node", "source": "node-a", "destination": "node-b"}
    assert fired.evidence[0]["summary"] == "network path node-a -> node-b degraded"
    assert fired.evidence[0]["services"] == [f"{D}cart -> {D}stock", f"{D}frontend -> {D}checkout"]
    assert fired.evidence[0]["healthy_paths"] == ["node-a -> node-c"]
    assert fired.affected_workloads == [f"{D}cart", f"{D}checkout", f"{D}frontend", f"{D}stock"]
    assert events[3] == []  # still firing: deduplicated
    (resolved,) = events[4]
    assert (resolved.status, resolved.alert_id) == ("resolved", fired.alert_id)


def test_one_pair_alone_points_at_the_service() -> None:
    s = stage()

    def window(i: int, bad: bool) -> list[EnrichedTcpConnection]:
        t = T0 + i * WINDOW
        resets = (
            [
                conn(t + 100 + k, A_CART, B_STOCK, srtt_us=500, segs_out=5, outcome="reset_by_peer")
                for k in range(10)
            ]
            if bad
            else []
        )
        return [
            *healthy(t, A_FRONT, B_CHECKOUT),
            *healthy(t, A_CART, B_STOCK),
            *resets,
            *healthy(t, A_FRONT, C_SEARCH),
        ]

    events = _windows(s, [window(0, False), window(1, True), window(2, False)])
    assert events[0] == []
    (fired,) = events[1]
    assert (fired.rule, fired.group) == (SERVICE_RULE, {"server_workload": f"{D}stock"})
    assert fired.affected_workloads == [f"{D}cart", f"{D}stock"]
    assert fired.evidence[0]["summary"] == f"service {D}stock degraded"
    (resolved,) = events[2]
    assert (resolved.rule, resolved.status) == (SERVICE_RULE, "resolved")


def test_one_server_failing_several_clients_is_the_service_not_the_path() -> None:
    s = stage()
    t = T0
    records = [
        *lossy(t, A_FRONT, B_STOCK),
        *lossy(t, A_CART, B_STOCK),
        *healthy(t, A_FRONT, B_CHECKOUT),
        *healthy(t, A_FRONT, C_SEARCH),
    ]
    (events,) = _windows(s, [records])
    assert [(e.rule, e.group) for e in events] == [(SERVICE_RULE, {"server_workload": f"{D}stock"})]


def test_no_healthy_path_to_compare_with_gives_no_network_verdict() -> None:
    s = stage()
    t = T0
    (events,) = _windows(s, [[*lossy(t, A_FRONT, B_CHECKOUT), *lossy(t, A_CART, B_STOCK)]])
    assert {e.rule for e in events} == {SERVICE_RULE}
    s = stage(require_healthy_path=False)
    (events,) = _windows(s, [[*lossy(t, A_FRONT, B_CHECKOUT), *lossy(t, A_CART, B_STOCK)]])
    assert [e.rule for e in events] == [NETWORK_RULE]


def test_rtt_against_the_pairs_own_baseline() -> None:
    s = stage(retransmission_rate=1.0)

    def window(i: int, rtt: int) -> list[EnrichedTcpConnection]:
        t = T0 + i * WINDOW
        return [
            *healthy(t, A_FRONT, B_CHECKOUT, rtt=rtt),
            *healthy(t, A_CART, B_STOCK, rtt=rtt),
            *healthy(t, A_FRONT, C_SEARCH, rtt=2000),
        ]

    # No baseline yet in the first two windows: a high RTT is not judged.
    events = _windows(
        s, [window(0, 9000), window(1, 2000), window(2, 2000), window(3, 2000), window(4, 9000)]
    )
    assert events[:4] == [[], [], [], []]
    (fired,) = events[4]
    assert fired.rule == NETWORK_RULE
    pairs = fired.evidence[0]["pairs"]
    assert isinstance(pairs, dict)
    front = pairs[f"{D}frontend -> {D}checkout"]
    assert front["rtt_p90_ratio"] == pytest.approx(4.5, rel=0.03)
    assert front["rtt_baseline_us"] == pytest.approx(2000, rel=0.02)  # 9000 did not count


def test_too_few_connections_are_not_judged() -> None:
    s = stage(min_connections=30)
    t = T0
    (events,) = _windows(
        s,
        [
            [
                *lossy(t, A_FRONT, B_CHECKOUT),
                *lossy(t, A_CART, B_STOCK),
                *healthy(t, A_FRONT, C_SEARCH),
            ]
        ],
    )
    assert events == []


def test_verdict_config_from_the_shipped_rules_file_and_bad_keys() -> None:
    shipped = parse_verdict(yaml.safe_load((ROOT / "config" / "alerts.yaml").read_text()))
    assert shipped.min_pairs >= 2 and shipped.baseline_windows >= 1
    assert parse_verdict({"rules": []}) == VerdictConfig()
    with pytest.raises(AlertRuleError, match="unknown keys"):
        parse_verdict({"network_verdict": {"retrans": 0.1}})
    with pytest.raises(AlertRuleError, match="scopes"):
        parse_verdict({"network_verdict": {"scopes": ["rack"]}})


def test_a_path_at_fault_holds_while_any_pair_on_it_is_degraded() -> None:
    s = stage()

    def window(i: int, checkout_connections: int) -> list[EnrichedTcpConnection]:
        t = T0 + i * WINDOW
        return [
            *lossy(t, A_FRONT, B_CHECKOUT, n=checkout_connections),
            *lossy(t, A_CART, B_STOCK),
            *healthy(t, A_FRONT, C_SEARCH),
        ]

    # Window 1: frontend -> checkout stalls below min_connections; cart -> stock alone is
    # still degraded on the path at fault: the episode holds, no service alert.
    events = _windows(s, [window(0, 20), window(1, 3), window(2, 20)])
    assert [(e.rule, e.status) for e in events[0]] == [(NETWORK_RULE, "firing")]
    assert events[1] == [] and events[2] == []


def test_pairs_without_a_known_node_are_not_judged() -> None:
    s = stage()
    t = T0
    nowhere = msgspec.structs.replace(B_STOCK, node=None)
    records = [*lossy(t, A_FRONT, nowhere), *healthy(t, A_FRONT, C_SEARCH)]
    (events,) = _windows(s, [records])
    assert events == []


def test_unusable_messages_are_counted_not_dead_lettered_twice() -> None:
    s = PathHealthProcessor(WINDOW, 0, 0)
    newest, dead = s.handle(b'{"not": "an enriched record"', Source("t", 0, 0, None), T0)
    assert (newest, dead) == (None, [])
    assert s.report()["unusable"] == 1 and s.report()["dead_lettered"] == 0


def test_no_service_is_blamed_while_the_other_pairs_on_its_path_are_too_thin_to_judge() -> None:
    s = stage()
    t = T0
    onset = [
        *lossy(t, A_CART, B_STOCK),
        *lossy(t, A_FRONT, B_CHECKOUT, n=3),
        *healthy(t, A_FRONT, C_SEARCH),
    ]
    alone = [*lossy(t + WINDOW, A_CART, B_STOCK), *healthy(t + WINDOW, A_FRONT, C_SEARCH)]
    events = _windows(s, [onset, alone])
    assert events[0] == []
    assert [(e.rule, e.group) for e in events[1]] == [
        (SERVICE_RULE, {"server_workload": f"{D}stock"})
    ]


def test_a_service_is_blamed_after_service_for_windows_and_episodes_clear_slowly() -> None:
    s = stage(service_for_windows=2, clear_windows=2)

    def window(i: int, bad: bool) -> list[EnrichedTcpConnection]:
        t = T0 + i * WINDOW
        on = lossy if bad else healthy
        return [
            *on(t, A_CART, B_STOCK),
            *healthy(t, A_FRONT, B_CHECKOUT),
            *healthy(t, A_FRONT, C_SEARCH),
        ]

    events = _windows(
        s,
        [
            window(0, True),
            window(1, False),
            window(2, True),
            window(3, True),
            window(4, False),
            window(5, True),
            window(6, False),
            window(7, False),
        ],
    )
    assert events[0] == [] and events[1] == [] and events[2] == []  # one window: a fluke
    assert [(e.rule, e.status) for e in events[3]] == [(SERVICE_RULE, "firing")]
    assert events[4] == [] and events[5] == [] and events[6] == []  # not two quiet in a row
    (resolved,) = events[7]
    assert (resolved.status, resolved.alert_id) == ("resolved", events[3][0].alert_id)
