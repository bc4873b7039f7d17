"""ProgramSet: a source owns its BPF object and closes it even when setting up fails."""

from __future__ import annotations

from typing import cast

import pytest

from collector.kernel.libbpf import BpfObject
from collector.kernel.programset import ProgramSet


class FakeObject:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1

    def percpu_u64_sums(self, name: str, count: int) -> list[int]:
        assert name == "udp_counters"
        return [7 * (i + 1) for i in range(count)]


def test_failed_setup_closes_the_object() -> None:
    fake = FakeObject()

    def setup(_obj: BpfObject) -> None:
        raise OSError("attach failed")

    with pytest.raises(OSError, match="attach failed"):
        ProgramSet(cast(BpfObject, fake), setup)
    assert fake.closed == 1


def test_counters_by_name_and_close_on_exit() -> None:
    fake = FakeObject()
    with ProgramSet(cast(BpfObject, fake), lambda _obj: None) as programs:
        counters = programs.percpu_counters("udp_counters", ("packets", "map_full"))
        assert counters == {"packets": 7, "map_full": 14}
        assert fake.closed == 0
    assert fake.closed == 1
