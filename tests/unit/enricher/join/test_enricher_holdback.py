"""Held-back records: release on metadata change, expiry, revoke, bounded size, offsets."""

from __future__ import annotations

from enricher.join.holdback import Holdback

S = 1_000_000_000
P0 = ("raw", 0)
P1 = ("raw", 1)


def test_release_by_changed_key_only() -> None:
    hb: Holdback[str] = Holdback(hold_ns=5 * S, max_records=10)
    assert hb.add("a", "ip:10.0.0.1", P0, 10, now_ns=0)
    assert hb.add("b", "ip:10.0.0.2", P0, 11, now_ns=0)
    assert hb.add("c", "ip:10.0.0.1", P1, 3, now_ns=0)
    assert len(hb) == 3
    assert hb.release_changed({"ip:10.0.0.9", "uid:x"}) == []
    released = hb.release_changed({"ip:10.0.0.1"})
    assert sorted(h.item for h in released) == ["a", "c"]
    assert len(hb) == 1
    assert hb.oldest_offset(P0) == 11 and hb.oldest_offset(P1) is None
    # Released records are not released again when their deadline passes.
    assert [h.item for h in hb.release_expired(10 * S)] == ["b"]
    assert len(hb) == 0 and hb.oldest_offset(P0) is None


def test_expiry_is_in_arrival_order_and_respects_deadlines() -> None:
    hb: Holdback[str] = Holdback(hold_ns=5 * S, max_records=10)
    hb.add("a", "k1", P0, 1, now_ns=0)
    hb.add("b", "k2", P0, 2, now_ns=2 * S)
    assert hb.release_expired(4 * S) == []
    assert [h.item for h in hb.release_expired(5 * S)] == ["a"]
    assert hb.oldest_offset(P0) == 2
    assert [h.item for h in hb.release_expired(7 * S)] == ["b"]
    # An expired record no longer waits on its key.
    assert hb.release_changed({"k1", "k2"}) == []


def test_bounded_size() -> None:
    hb: Holdback[int] = Holdback(hold_ns=S, max_records=2)
    assert hb.add(1, "k", P0, 1, 0) and hb.add(2, "k", P0, 2, 0)
    assert not hb.add(3, "k", P0, 3, 0)
    assert len(hb) == 2


def test_oldest_offset_survives_out_of_order_re_adds() -> None:
    hb: Holdback[str] = Holdback(hold_ns=5 * S, max_records=10)
    hb.add("a", "k1", P0, 5, 0)
    hb.add("b", "k2", P0, 6, 0)
    (a,) = hb.release_changed({"k1"})
    assert hb.oldest_offset(P0) == 6
    # Re-held after a retry that still misses something: offset 5 is held again.
    hb.add(a.item, "k3", a.partition, a.offset, S, a.deadline_ns)
    assert hb.oldest_offset(P0) == 5
    assert a.deadline_ns == 5 * S


def test_release_partitions_and_all() -> None:
    hb: Holdback[str] = Holdback(hold_ns=5 * S, max_records=10)
    hb.add("a", "k", P0, 1, 0)
    hb.add("b", "k", P1, 1, 0)
    hb.add("c", "k", P1, 2, 0)
    assert [h.item for h in hb.release_partitions({P1})] == ["b", "c"]
    assert hb.oldest_offset(P1) is None and len(hb) == 1
    assert [h.item for h in hb.release_changed({"k"})] == ["a"]
    hb.add("d", "k", P0, 3, 0)
    assert [h.item for h in hb.release_all()] == ["d"]
    assert hb.release_expired(100 * S) == [] and len(hb) == 0


def test_disabled_when_hold_is_zero() -> None:
    assert not Holdback[str](hold_ns=0, max_records=10).enabled
    assert Holdback[str](hold_ns=1, max_records=10).enabled


def test_records_sharing_an_offset_keep_it_held_until_the_last_is_released() -> None:
    # A batched raw message puts several records at one offset.
    hb: Holdback[str] = Holdback(hold_ns=10, max_records=10)
    p = ("raw", 0)
    assert hb.add("a", "ip:1", p, 7, now_ns=0)
    assert hb.add("b", "ip:2", p, 7, now_ns=0)
    assert hb.add("c", "ip:2", p, 9, now_ns=0)
    assert len(hb) == 3 and hb.oldest_offset(p) == 7
    assert [h.item for h in hb.release_changed({"ip:1"})] == ["a"]
    assert hb.oldest_offset(p) == 7  # "b" still holds offset 7
    assert [h.item for h in hb.release_changed({"ip:2"})] == ["b", "c"]
    assert hb.oldest_offset(p) is None and len(hb) == 0


def test_revoking_a_partition_releases_batched_records_in_offset_order() -> None:
    hb: Holdback[str] = Holdback(hold_ns=10, max_records=10)
    p = ("raw", 1)
    for item, offset in (("x", 5), ("y", 3), ("z", 5)):
        assert hb.add(item, "k", p, offset, now_ns=0)
    assert [h.item for h in hb.release_partitions({p})] == ["y", "x", "z"]
    assert len(hb) == 0 and hb.oldest_offset(p) is None
    assert hb.release_expired(now_ns=100) == []  # the released ones do not expire again
