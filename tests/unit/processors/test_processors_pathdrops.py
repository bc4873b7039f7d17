"""Kernel drops (raw.drops) joined to the path health cells and judged by the verdict (pure)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from processors_records import T0, S, conn, pod

from flowscope.codec import JsonCodec
from flowscope.records import (
    AlertEvent,
    Endpoint,
    EnrichedTcpConnection,
    PathHealthMetric,
    RawPacketDrops,
)
from processors.core.alerts import AlertRuleError
from processors.core.stage import Source
from processors.path.health import DROPS_PARTITION_BASE, PathDropsInput, PathHealthProcessor
from processors.path.verdict import (
    NETWORK_DROP_REASONS,
    NETWORK_RULE,
    SERVICE_RULE,
    VerdictConfig,
    load_verdict,
    parse_verdict,
)

WINDOW = 10 * S
D = "shop/Deployment/"
ROOT = Path(__file__).resolve().parents[3]


def at(workload: str, node: str, zone: str, address: str) -> Endpoint:
    return msgspec.structs.replace(pod(workload, zone), node=node, address=address)


FRONT = at("frontend", "node-a", "zone-a", "10.1.0.1")
CART = at("cart", "node-a", "zone-a", "10.1.0.2")
CHECKOUT = at("checkout", "node-b", "zone-b", "10.2.0.1")
STOCK = at("stock", "node-b", "zone-b", "10.2.0.2")
SEARCH = at("search", "node-c", "zone-c", "10.3.0.1")


def drop(
    src: str, dst: str, packets: int, end_ns: int, reason: str = "NETFILTER_DROP", proto: int = 6
) -> RawPacketDrops:
    return RawPacketDrops(
        node="node-b",
        window_start_ns=end_ns - 2 * S,
        window_end_ns=end_ns,
        reason=reason,
        reason_code=1,
        packets=packets,
        bytes=packets * 100,
        cgroup_id=0,
        cgroup_path=None,
        pod_uid=None,
        container_id=None,
        netns_ino=1,
        node_netns=True,
        family=4,
        ip_proto=proto,
        src_addr=src,
        dst_addr=dst,
    )


def traffic(t: int, client: Endpoint, server: Endpoint, n: int = 20) -> list[EnrichedTcpConnection]:
    return [conn(t + i, client, server, srtt_us=500, segs_out=100) for i in range(n)]


class Harness:
    def __init__(self, **config: object) -> None:
        verdict = VerdictConfig(
            **{
                "baseline_windows": 2,
                "scopes": ("node",),  # type: ignore[arg-type]
                "retransmission_rate": 1.0,
                **config,
            }
        )
        self.stage = PathHealthProcessor(WINDOW, 0, 0, verdict)
        self.drops = PathDropsInput(self.stage)

    def window(
        self,
        i: int,
        records: list[EnrichedTcpConnection],
        drops: list[RawPacketDrops],
    ) -> tuple[list[PathHealthMetric], list[AlertEvent]]:
        close_at = T0 + (i + 1) * WINDOW + 1
        # Drops first, and on partition 0 of their own topic: partition 0 of enriched.tcp too.
        for d in drops:
            self.drops.handle(
                JsonCodec(RawPacketDrops).encode(d), Source("drops", 0, 0, None), close_at
            )
        codec = JsonCodec(EnrichedTcpConnection)
        for r in records:
            self.stage.handle(codec.encode(r), Source("tcp", 0, 0, None), close_at)
        assert self.drops.close_ready(close_at) == []
        out = self.stage.close_ready(close_at)
        metrics = [
            JsonCodec(PathHealthMetric).decode(o.value) for o in out if o.kind == "path_health"
        ]
        return metrics, [JsonCodec(AlertEvent).decode(o.value) for o in out if o.kind == "alerts"]


def test_drops_join_the_path_of_the_connections_between_their_addresses() -> None:
    h = Harness()
    t = T0 + 1
    records = [*traffic(t, FRONT, CHECKOUT), *traffic(t, FRONT, SEARCH)]
    drops = [
        drop(FRONT.address, CHECKOUT.address, 7, t + S),  # client -> server
        drop(CHECKOUT.address, FRONT.address, 3, t + S, reason="TCP_OLD_DATA"),  # the reply
        drop(FRONT.address, "10.9.9.9", 5, t + S),  # no connection there: unjoined
        drop(FRONT.address, SEARCH.address, 11, t + S, proto=17),  # UDP: not a TCP path's
    ]
    metrics, _ = h.window(0, records, drops)
    by = {(m.scope, m.source, m.destination): m for m in metrics}
    ab = by[("node", "node-a", "node-b")]
    assert (ab.dropped_packets, ab.drops) == (10, {"NETFILTER_DROP": 7, "TCP_OLD_DATA": 3})
    assert ab.drop_rate == 10 / 2000
    assert by[("zone", "zone-a", "zone-b")].drops == ab.drops  # once per scope
    assert by[("node", "node-a", "node-c")].dropped_packets == 0
    assert by[("node", "node-a", "node-c")].drop_rate == 0
    assert all(m.source_partition < DROPS_PARTITION_BASE for m in metrics)
    counters = h.stage.counters()
    assert (counters["drop_records"], counters["drop_joined_packets"]) == (4, 10)
    assert counters["drop_unjoined_packets"] == 16
    assert counters["drop_late"] == 0


def test_a_drop_record_after_its_window_closed_is_counted_late() -> None:
    h = Harness()
    h.window(0, traffic(T0 + 1, FRONT, CHECKOUT), [])
    h.window(
        1,
        traffic(T0 + WINDOW + 1, FRONT, CHECKOUT),
        [drop(FRONT.address, CHECKOUT.address, 4, T0 + 2 * S)],
    )
    c = h.stage.counters()
    assert (c["drop_late"], c["drop_unjoined_packets"], c["drop_joined_packets"]) == (1, 4, 0)


def test_drops_alone_make_the_network_verdict_on_a_path_with_several_pairs() -> None:
    h = Harness(drop_rate=0.01)
    for i in range(2):  # healthy baseline
        t = T0 + i * WINDOW + 1
        assert (
            h.window(
                i,
                [
                    *traffic(t, FRONT, CHECKOUT),
                    *traffic(t, CART, STOCK),
                    *traffic(t, FRONT, SEARCH),
                ],
                [],
            )[1]
            == []
        )
    t = T0 + 2 * WINDOW + 1
    drops = [
        drop(FRONT.address, CHECKOUT.address, 40, t + S),
        drop(STOCK.address, CART.address, 30, t + S),
    ]
    metrics, events = h.window(
        2,
        [*traffic(t, FRONT, CHECKOUT), *traffic(t, CART, STOCK), *traffic(t, FRONT, SEARCH)],
        drops,
    )
    ab = [m for m in metrics if (m.scope, m.source, m.destination) == ("node", "node-a", "node-b")]
    assert [m.drops for m in ab] == [{"NETFILTER_DROP": 70}]
    (fired,) = events
    assert (fired.rule, fired.status) == (NETWORK_RULE, "firing")
    assert fired.group == {"scope": "node", "source": "node-a", "destination": "node-b"}
    evidence = fired.evidence[0]
    assert evidence["services"] == [f"{D}cart -> {D}stock", f"{D}frontend -> {D}checkout"]
    pairs = evidence["pairs"]
    assert isinstance(pairs, dict)
    assert pairs[f"{D}frontend -> {D}checkout"]["drop_rate"] == 40 / 2000
    assert pairs[f"{D}cart -> {D}stock"]["drop_rate"] == 30 / 2000
    assert "retransmission_rate" not in pairs[f"{D}cart -> {D}stock"]


def test_drops_on_one_pair_alone_blame_its_service() -> None:
    h = Harness(drop_rate=0.01, service_for_windows=1)
    t = T0 + 1
    records = [*traffic(t, FRONT, CHECKOUT), *traffic(t, CART, STOCK), *traffic(t, FRONT, SEARCH)]
    _, events = h.window(0, records, [drop(CHECKOUT.address, FRONT.address, 50, t + S)])
    assert [(e.rule, e.group) for e in events] == [
        (SERVICE_RULE, {"server_workload": f"{D}checkout"})
    ]


def test_a_revoked_drops_partition_forgets_only_its_own_windows() -> None:
    h = Harness()
    t = T0 + 1
    h.drops.handle(
        JsonCodec(RawPacketDrops).encode(drop(FRONT.address, CHECKOUT.address, 1, t + S)),
        Source("drops", 0, 0, None),
        t,
    )
    codec = JsonCodec(EnrichedTcpConnection)
    for r in traffic(t, FRONT, CHECKOUT, n=3):
        h.stage.handle(codec.encode(r), Source("tcp", 0, 0, None), t)
    assert h.drops.drop_partitions([0]) == 1
    assert h.stage.aggregator.pending_records() == 3


def test_an_ends_own_drops_are_shown_but_do_not_degrade_a_pair() -> None:
    h = Harness(drop_rate=0.01)
    t = T0 + 1
    records = [*traffic(t, FRONT, CHECKOUT), *traffic(t, CART, STOCK), *traffic(t, FRONT, SEARCH)]
    drops = [
        drop(FRONT.address, CHECKOUT.address, 60, t + S, reason="NO_SOCKET"),
        drop(CART.address, STOCK.address, 60, t + S, reason="TCP_OLD_DATA"),
    ]
    metrics, events = h.window(0, records, drops)
    assert events == []
    ab = [m for m in metrics if (m.scope, m.source, m.destination) == ("node", "node-a", "node-b")]
    assert [m.drops for m in ab] == [{"NO_SOCKET": 60, "TCP_OLD_DATA": 60}]


def test_the_shipped_rules_count_the_default_network_drop_reasons() -> None:
    shipped = load_verdict(ROOT / "config" / "alerts.yaml")
    assert shipped.drop_reasons == NETWORK_DROP_REASONS
    assert "NETFILTER_DROP" in shipped.drop_reasons and "NO_SOCKET" not in shipped.drop_reasons
    with pytest.raises(AlertRuleError, match="drop_reasons"):
        parse_verdict({"network_verdict": {"drop_reasons": [""]}})


def test_no_service_is_blamed_while_its_zone_path_has_pairs_too_thin_to_judge() -> None:
    # One pair on each of zone-b's nodes: node-a -> node-b has checkout's pair alone, but
    # the zone path also carries stock's, too thin to judge this window.
    stock_b2 = at("stock", "node-b2", "zone-b", "10.2.1.1")
    h = Harness(drop_rate=0.01, service_for_windows=1, scopes=("node", "zone"))
    t = T0 + 1
    records = [
        *traffic(t, FRONT, CHECKOUT),
        *traffic(t, CART, stock_b2, n=2),
        *traffic(t, FRONT, SEARCH),
    ]
    _, events = h.window(0, records, [drop(FRONT.address, CHECKOUT.address, 50, t + S)])
    assert events == []
    # The next window stock's pair is judged healthy: checkout's server is to blame.
    t += WINDOW
    records = [
        *traffic(t, FRONT, CHECKOUT),
        *traffic(t, CART, stock_b2),
        *traffic(t, FRONT, SEARCH),
    ]
    _, events = h.window(1, records, [drop(FRONT.address, CHECKOUT.address, 50, t + S)])
    assert [(e.rule, e.group) for e in events] == [
        (SERVICE_RULE, {"server_workload": f"{D}checkout"})
    ]
