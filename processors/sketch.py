"""A mergeable relative-error quantile sketch (the DDSketch idea, Masson et al., VLDB 2019).

Positive values fall into logarithmically spaced bins: bin ``i`` holds the values in
``(gamma**(i-1), gamma**i]`` with ``gamma = (1 + alpha) / (1 - alpha)``. Answering a quantile
with the bin's midpoint ``2 * gamma**i / (gamma + 1)`` is then within a relative error of
``alpha`` of the exact value at that rank. Two sketches with the same ``alpha`` merge by adding
bin counts, so consumers can merge windows and workload pairs themselves and still get the same
guarantee as if one sketch had seen all the values.

Why not the ``ddsketch`` package: the published form must be a small, documented JSON object
that a consumer in any language can merge, and the whole thing is ~100 lines; owning it keeps
the wire format under our control. Bins are not collapsed: latencies between 1 µs and one hour
need about 1,100 bins at alpha = 1%, and a window's sketch holds only the bins actually hit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

SKETCH_TYPE = "flowscope.ddsketch.v1"
DEFAULT_ALPHA = 0.01


class SketchError(ValueError):
    """Invalid input to a sketch, an incompatible merge, or a malformed published sketch."""


class QuantileSketch:
    """Relative-error quantiles over non-negative values (latencies, sizes)."""

    __slots__ = (
        "_bins",
        "_gamma",
        "_log_gamma",
        "alpha",
        "count",
        "max",
        "min",
        "sum",
        "zero_count",
    )

    def __init__(self, alpha: float = DEFAULT_ALPHA) -> None:
        if not 0.0 < alpha < 1.0:
            raise SketchError(f"alpha must be in (0, 1), got {alpha}")
        self.alpha = alpha
        self._gamma = (1.0 + alpha) / (1.0 - alpha)
        self._log_gamma = math.log(self._gamma)
        self._bins: dict[int, int] = {}
        self.zero_count = 0  # exact zeros have no logarithm: counted apart
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float, count: int = 1) -> None:
        if not value >= 0.0 or math.isinf(value):  # also rejects NaN
            raise SketchError(f"sketch values must be finite and >= 0, got {value}")
        if count <= 0:
            raise SketchError(f"count must be positive, got {count}")
        if value == 0.0:
            self.zero_count += count
        else:
            index = math.ceil(math.log(value) / self._log_gamma)
            self._bins[index] = self._bins.get(index, 0) + count
        self.count += count
        self.sum += value * count
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def merge(self, other: QuantileSketch) -> None:
        """Add ``other``'s values into this sketch (same alpha required)."""
        if other.alpha != self.alpha:
            raise SketchError(f"cannot merge sketches with alpha {self.alpha} and {other.alpha}")
        for index, n in other._bins.items():
            self._bins[index] = self._bins.get(index, 0) + n
        self.zero_count += other.zero_count
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def quantile(self, q: float) -> float | None:
        """The value at rank ``floor(q * (count - 1))`` within relative error alpha.

        None when the sketch is empty.
        """
        if not 0.0 <= q <= 1.0:
            raise SketchError(f"quantile must be in [0, 1], got {q}")
        if self.count == 0:
            return None
        rank = q * (self.count - 1)
        seen = self.zero_count
        if seen > rank:
            return 0.0
        for index in sorted(self._bins):
            seen += self._bins[index]
            if seen > rank:
                estimate = 2.0 * self._gamma**index / (self._gamma + 1.0)
                # The exact extremes are known: clamping can only reduce the error.
                return min(max(estimate, self.min), self.max)
        return self.max  # unreachable while counts are consistent

    def bins(self) -> dict[int, int]:
        return dict(self._bins)

    def to_dict(self) -> dict[str, object]:
        """The published form: JSON-safe, self-describing, mergeable by any consumer.

        ``bin_indexes``/``bin_counts`` are parallel lists sorted by index; bin ``i`` covers
        ``(gamma**(i-1), gamma**i]``; ``zero_count`` counts exact zeros.
        """
        indexes = sorted(self._bins)
        empty = self.count == 0
        return {
            "type": SKETCH_TYPE,
            "alpha": self.alpha,
            "gamma": self._gamma,
            "count": self.count,
            "sum": self.sum,
            "min": None if empty else self.min,
            "max": None if empty else self.max,
            "zero_count": self.zero_count,
            "bin_indexes": indexes,
            "bin_counts": [self._bins[i] for i in indexes],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> QuantileSketch:
        if data.get("type") != SKETCH_TYPE:
            raise SketchError(f"not a {SKETCH_TYPE} sketch: type={data.get('type')!r}")
        try:
            sketch = cls(float(_number(data["alpha"])))
            indexes = _int_list(data["bin_indexes"])
            counts = _int_list(data["bin_counts"])
            zero_count = int(_number(data["zero_count"]))
            total = int(_number(data["count"]))
            sketch.sum = float(_number(data["sum"]))
            if total:
                sketch.min = float(_number(data["min"]))
                sketch.max = float(_number(data["max"]))
        except KeyError as exc:
            raise SketchError(f"sketch is missing field {exc}") from exc
        if len(indexes) != len(counts) or any(n <= 0 for n in counts) or zero_count < 0:
            raise SketchError("sketch bins are inconsistent")
        sketch._bins = dict(zip(indexes, counts, strict=True))
        sketch.zero_count = zero_count
        sketch.count = zero_count + sum(counts)
        if sketch.count != total:
            raise SketchError(f"sketch count {total} != sum of its bins {sketch.count}")
        return sketch


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SketchError(f"expected a number, got {value!r}")
    return value


def _int_list(value: object) -> list[int]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise SketchError(f"expected a list of integers, got {value!r}")
    return list(value)


def sketch_of(values: Iterable[float], alpha: float = DEFAULT_ALPHA) -> QuantileSketch:
    sketch = QuantileSketch(alpha)
    for value in values:
        sketch.add(value)
    return sketch


# The short name other packages (demo/readout.py) import.
Sketch = QuantileSketch
