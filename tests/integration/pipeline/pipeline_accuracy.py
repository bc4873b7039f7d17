"""Published percentiles against the exact ones, by the sketch's own definitions.

The sketch (processors/core/sketch.py) answers quantile ``q`` of ``n`` values with the value at
rank ``floor(q * (n - 1))`` of the sorted values (0-based), within a relative error of its
``alpha``. The exact figure is taken at that same rank: another convention (nearest rank,
interpolation) would differ from it on small samples by more than the bound, and a test
using one would either fail for no fault or need a bound too loose to catch one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from processors.core.sketch import DEFAULT_ALPHA, QuantileSketch

# Float rounding at a bin edge only; the guarantee itself is alpha.
ROUNDING_SLACK = 1e-9


def exact_quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


@dataclass
class AccuracyCheck:
    """Compares published percentiles with exact ones; keeps the figures for the report."""

    alpha: float = DEFAULT_ALPHA
    records: int = 0  # latencies the exact figures were computed from
    groups: int = 0  # published records (windows x groups) compared
    comparisons: int = 0
    worst_relative_error: float = 0.0

    def check(
        self,
        what: str,
        values: Sequence[float],
        published: Mapping[float, float | None],
        sketch: Mapping[str, object] | None,
    ) -> None:
        """``published``: quantile -> the published figure, for one record whose sketch saw
        exactly ``values``."""
        if not values:
            assert all(p is None for p in published.values()), (what, published)
            assert sketch is None, (what, sketch)
            return
        assert sketch is not None, f"{what}: percentiles without their sketch"
        # The bound is the one the pipeline states: the published sketch's alpha, as set.
        assert sketch["alpha"] == self.alpha, (what, sketch["alpha"])
        assert QuantileSketch.from_dict(sketch).count == len(values), (what, sketch, values)
        for q, got in published.items():
            want = exact_quantile(values, q)
            assert got is not None, (what, q, values)
            if want == 0:
                assert got == 0, (what, q, got, values)
                error = 0.0
            else:
                error = abs(got - want) / want
                assert error <= self.alpha * (1 + ROUNDING_SLACK), (
                    f"{what}: p{q * 100:g} published {got}, exact {want} at rank "
                    f"floor({q} * ({len(values)} - 1)) of {sorted(values)}: relative error "
                    f"{error:.4f} > alpha {self.alpha}"
                )
            self.worst_relative_error = max(self.worst_relative_error, error)
            self.comparisons += 1
        self.records += len(values)
        self.groups += 1

    def summary(self) -> str:
        return (
            f"latency accuracy: {self.records} latencies in {self.groups} published records, "
            f"{self.comparisons} percentiles, worst relative error "
            f"{self.worst_relative_error:.5f} (bound alpha={self.alpha})"
        )
