"""What a consumer of the metrics topics does to count every connection exactly once.

A worker that restarts (or a partition that moves) may publish a window again from records
it re-read. Such a record carries the same ``metric_id`` as the first one, and the first one is
the complete one (see processors/app.py), so: keep the first record per id, drop the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar


class HasMetricId(Protocol):
    @property
    def metric_id(self) -> str: ...


M = TypeVar("M", bound=HasMetricId)


class FirstPerId:
    """Remembers the ids it has let through; feed records in the order they were read."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self.duplicates = 0

    def keep(self, records: Iterable[M]) -> list[M]:
        kept = []
        for record in records:
            if record.metric_id in self._seen:
                self.duplicates += 1
                continue
            self._seen.add(record.metric_id)
            kept.append(record)
        return kept
