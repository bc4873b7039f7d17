"""The replay metadata a joiner commits with an offset stopped at a held record."""

from __future__ import annotations

from enricher.join import replay


def test_round_trip_names_the_held_records() -> None:
    text = replay.encode(120, [(100, 3), (100, 1), (117, 0)])
    found = replay.decode(text)
    assert found is not None and found.end == 120
    assert found.keep(100, 1) and found.keep(117, 0) and not found.keep(100, 2)
    assert len(text) <= replay.MAX_METADATA_BYTES


def test_past_its_bound_only_the_end_is_kept_and_everything_is_emitted_again() -> None:
    text = replay.encode(10**6, [(o, i) for o in range(1000) for i in range(3)])
    found = replay.decode(text)
    assert len(text) <= replay.MAX_METADATA_BYTES
    assert found is not None and found.held is None and found.keep(5, 0)
    assert replay.decode(replay.encode(9, [(1, 0)], unknown=True)).held is None  # type: ignore[union-attr]


def test_other_or_broken_metadata_is_no_replay() -> None:
    for text in (None, "", "not json", '{"v": 2, "end": 1, "held": []}', '{"v": 1}', "[1]"):
        assert replay.decode(text) is None, text
