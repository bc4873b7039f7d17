"""The metadata watermark in MetadataState: live heartbeats move it, snapshots do not."""

from __future__ import annotations

from enricher.join.state import WATERMARK, MetadataState
from enricher.publish.cluster import ClusterModel
from flowscope.records.metadata import HeartbeatMeta, MetaCodec

S = 1_000_000_000
CODEC = MetaCodec()


def beat(observed_ns: int, interval_s: float = 1.0, source: str = "p") -> bytes:
    return CODEC.encode(
        HeartbeatMeta(source=source, observed_ns=observed_ns, interval_s=interval_s)
    )


def test_no_heartbeat_no_watermark() -> None:
    state = MetadataState()
    assert not state.past_watermark(10**20)


def test_a_heartbeat_vouches_for_two_intervals_and_only_moves_forward() -> None:
    state = MetadataState()
    state.track_changes()
    assert state.apply("Heartbeat/p", beat(100 * S), 0) == "upserted"
    assert state.drain_changes() == {WATERMARK}
    assert not state.past_watermark(102 * S)
    assert state.past_watermark(102 * S + 1)
    state.apply("Heartbeat/q", beat(90 * S), 0)  # an older one (another replica): no change
    assert state.drain_changes() == set()
    assert state.past_watermark(102 * S + 1)


def test_a_snapshot_heartbeat_and_a_pruned_one_leave_the_watermark() -> None:
    state = MetadataState()
    state.apply("Heartbeat/f", beat(100 * S, interval_s=0), 0)
    assert state.watermark_ns is None
    state.apply("Heartbeat/p", beat(100 * S), 0)
    assert state.apply("Heartbeat/p", None, 0) == "ignored"
    assert state.watermark_ns == 100 * S


def test_the_publisher_never_prunes_heartbeats() -> None:
    model = ClusterModel()
    model.published["Heartbeat/p"] = beat(1)
    model.published["Pod/shop/gone"] = b"{}"
    assert model.stale_keys() == ["Pod/shop/gone"]
