"""Pins: the generation digest decides resume or upgrade; what a start found is counted."""

from __future__ import annotations

from pathlib import Path

from collector.kernel.pins import RestartReport, generation, remove_tree


def test_generation_changes_with_object_knobs_and_ring_size(tmp_path: Path) -> None:
    obj = tmp_path / "x.bpf.o"
    obj.write_bytes(b"\x7fELF one")
    knobs = {"targ_a": 1, "targ_b": 2}
    same = generation(obj, knobs, 1 << 20)
    assert generation(obj, {"targ_b": 2, "targ_a": 1}, 1 << 20) == same  # order is not a change
    assert generation(obj, {"targ_a": 1, "targ_b": 3}, 1 << 20) != same
    assert generation(obj, knobs, 2 << 20) != same
    obj.write_bytes(b"\x7fELF two")  # a new build is an upgrade
    assert generation(obj, knobs, 1 << 20) != same


def test_report_counters_name_every_number() -> None:
    report = RestartReport("upgraded", "abc", 0, 0, 12, 3)
    assert report.counters() == {
        "restart_resumed": 0,
        "restart_backlog_records": 0,
        "restart_upgrade_discarded_records": 12,
        "restart_upgrade_open_connections": 3,
    }
    assert RestartReport("resumed", backlog_records=5).counters()["restart_resumed"] == 1


def test_remove_tree_removes_everything_and_tolerates_absence(tmp_path: Path) -> None:
    (tmp_path / "n" / "tcpconn" / "g1").mkdir(parents=True)
    (tmp_path / "n" / "tcpconn" / "g1" / "events").write_text("")
    removed = remove_tree(tmp_path / "n")
    assert tmp_path / "n" / "tcpconn" / "g1" / "events" in removed
    assert not (tmp_path / "n").exists()
    assert remove_tree(tmp_path / "n") == []
