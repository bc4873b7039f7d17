"""UDP cost: flow windows counted once, bytes and dollars exact, ids apart from TCP's."""

from __future__ import annotations

from pathlib import Path

import msgspec
from processors_records import T0, S, external, pod

from flowscope.codec import JsonCodec
from flowscope.records import CostPairMetric, CostRollupMetric, Endpoint, EnrichedUdpFlow
from processors.core.stage import Source
from processors.cost.prices import load_price_table
from processors.udp.processor import UdpProcessor

PRICES = Path(__file__).resolve().parents[4] / "config" / "prices.yaml"
W = 10 * S


def flow(end_ns: int, client: Endpoint, server: Endpoint, **fields: object) -> EnrichedUdpFlow:
    values: dict[str, object] = dict(
        start_time_ns=end_ns - 5 * S,
        end_time_ns=end_ns,
        observer_node="n1",
        observer_role="client",
        client_observed=True,
        network_type="ipv4",
        client=client,
        server=server,
        bytes_client_to_server=0,
        bytes_server_to_client=0,
        packets_client_to_server=1,
        packets_server_to_client=1,
        peer_class="cross_zone",
    )
    values.update(fields)
    return EnrichedUdpFlow(**values)  # type: ignore[arg-type]


def run(records: list[EnrichedUdpFlow]) -> tuple[list[CostPairMetric], list[CostRollupMetric]]:
    stage = UdpProcessor(W, 0, 0, load_price_table(PRICES, "aws"))
    stage.assign([0])
    codec = JsonCodec(EnrichedUdpFlow)
    for offset, record in enumerate(records):
        _newest, dead = stage.handle(codec.encode(record), Source("t", 0, offset, None), T0)
        assert dead == []
    outputs = stage.close_ready(T0 + 10_000 * S)
    pairs = [
        msgspec.json.decode(o.value, type=CostPairMetric) for o in outputs if o.kind == "cost_pairs"
    ]
    rollups = [
        msgspec.json.decode(o.value, type=CostRollupMetric)
        for o in outputs
        if o.kind == "cost_rollups"
    ]
    return pairs, rollups


def test_cross_zone_udp_is_charged_once_from_both_ends_reports() -> None:
    player, streamer = pod("player", "us-east-1a"), pod("streamer", "us-east-1b")
    c2s, s2c = 10**9, 4 * 10**9
    client_side = flow(
        T0 + S, player, streamer, bytes_client_to_server=c2s, bytes_server_to_client=s2c
    )
    server_side = msgspec.structs.replace(client_side, observer_role="server", observer_node="n2")
    pairs, rollups = run([client_side, server_side, client_side])
    [p] = pairs
    assert (p.transport, p.connections, p.cost_class) == ("udp", 2, "cross_zone")
    assert (p.bytes_source_to_destination, p.bytes_destination_to_source) == (2 * c2s, 2 * s2c)
    # $0.01/GB each way at both ends: 10 GB crossing, paid out and in.
    assert (p.cost_usd_source, p.cost_usd_destination, p.cost_usd) == (0.1, 0.1, 0.2)
    assert p.metric_id.startswith("cost.pair.udp|")
    assert all(r.transport == "udp" and r.metric_id.startswith("cost.rollup.udp|") for r in rollups)
    by = {(r.scope, r.name): r.cost_usd for r in rollups}
    assert by[("workload", "shop/Deployment/player")] == 0.1


def test_udp_from_the_internet_is_counted_from_the_server_side() -> None:
    dns = pod("resolver", "us-east-1a")
    inbound = flow(
        T0 + S,
        external("93.184.216.34"),
        dns,
        observer_role="server",
        client_observed=False,
        bytes_client_to_server=10**9,
        bytes_server_to_client=2 * 10**9,
        peer_class="internet",
    )
    [p], _ = run([inbound])
    # The inside end sends 2 GB to the internet at $0.09/GB; what it receives is free.
    assert (p.bytes_destination_to_source, p.cost_usd_destination, p.cost_usd_source) == (
        2 * 10**9,
        0.18,
        0.0,
    )


def test_negative_volume_is_dead_lettered() -> None:
    stage = UdpProcessor(W, 0, 0, load_price_table(PRICES, "aws"))
    stage.assign([0])
    bad = flow(T0 + S, pod("a", "z-1a"), pod("b", "z-1b"), bytes_client_to_server=-1)
    _newest, dead = stage.handle(
        JsonCodec(EnrichedUdpFlow).encode(bad), Source("t", 0, 0, None), T0
    )
    assert len(dead) == 1 and b"negative volume" in dead[0]
