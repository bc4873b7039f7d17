"""Periodic: when the loop's periodic jobs (health record, UDP window) are due."""

from __future__ import annotations

from collections.abc import Callable

from collector.periodic import Periodic


def fake_clock(start: float) -> tuple[list[float], Callable[[], float]]:
    now = [start]
    return now, lambda: now[0]


def test_not_due_before_interval_then_due_once() -> None:
    now, clock = fake_clock(100.0)
    every = Periodic(10.0, clock)
    now[0] = 109.9
    assert not every.due()
    now[0] = 110.0
    assert every.due()
    assert not every.due()  # the next one is measured from this one
    now[0] = 119.9
    assert not every.due()
    now[0] = 120.0
    assert every.due()


def test_force_is_due_and_restarts_interval() -> None:
    now, clock = fake_clock(0.0)
    every = Periodic(10.0, clock)
    now[0] = 3.0
    assert every.due(force=True)
    assert (every.started_s, every.last_s) == (0.0, 3.0)
    now[0] = 12.0
    assert not every.due()
    now[0] = 13.0
    assert every.due()
    assert every.last_s == 13.0
