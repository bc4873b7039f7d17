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

from processors import ProcessorsError

SKETCH_TYPE = "flowscope.ddsketch.v1"
DEFAULT_ALPHA = 0.01


class SketchError(ProcessorsError, ValueError):
    """Invalid input to a sketch, an incompatible merge, or a malformed published sketch."""


class QuantileSketch:
    """Relative-error quantiles over non-negative values (latencies, sizes).

    Integer inserts are buffered as value -> count and folded into the bins before anything
    reads the sketch (or once ``PENDING_LIMIT`` distinct values wait): an insert on the hot
    path is then one dict update instead of a logarithm and five updates, and the folded
    sketch is the same to the bit (the sum of integers below 2**53 is exact in any order).
    """

    # Distinct buffered values before a fold: bounds the buffer's memory like the bins'.
    PENDING_LIMIT = 1024

    __slots__ = (
        "_bins",
        "_count",
        "_gamma",
        "_log_gamma",
        "_max",
        "_min",
        "_pending",
        "_sum",
        "_zero_count",
        "alpha",
    )

    def __init__(self, alpha: float = DEFAULT_ALPHA) -> None:
        if not 0.0 < alpha < 1.0:
            raise SketchError(f"alpha must be in (0, 1), got {alpha}")
        self.alpha = alpha
        self._gamma = (1.0 + alpha) / (1.0 - alpha)
        self._log_gamma = math.log(self._gamma)
        self._bins: dict[int, int] = {}
        self._pending: dict[int, int] = {}  # integer value -> inserts not folded yet
        self._zero_count = 0  # exact zeros have no logarithm: counted apart
        self._count = 0
        self._sum = 0.0
        self._min: float = math.inf
        self._max: float = -math.inf

    @property
    def count(self) -> int:
        self._fold()
        return self._count

    @property
    def zero_count(self) -> int:
        self._fold()
        return self._zero_count

    @property
    def sum(self) -> float:
        self._fold()
        return self._sum

    @property
    def min(self) -> float:
        self._fold()
        return self._min

    @property
    def max(self) -> float:
        self._fold()
        return self._max

    def add(self, value: float, count: int = 1) -> None:
        if type(value) is int and count == 1 and value >= 0:
            # The hot path (one latency per record): buffered, folded before any read.
            pending = self._pending
            n = pending.get(value)
            if n is None:
                if len(pending) >= self.PENDING_LIMIT:
                    self._fold()
                    pending = self._pending
                pending[value] = 1
            else:
                pending[value] = n + 1
            return
        self._insert(value, count)

    def _fold(self) -> None:
        if self._pending:
            pending = self._pending
            self._pending = {}
            for value, n in pending.items():
                self._insert(value, n)

    def _insert(self, value: float, count: int) -> None:
        if not value >= 0.0 or math.isinf(value):  # also rejects NaN
            raise SketchError(f"sketch values must be finite and >= 0, got {value}")
        if count <= 0:
            raise SketchError(f"count must be positive, got {count}")
        if value == 0.0:
            self._zero_count += count
        else:
            index = math.ceil(math.log(value) / self._log_gamma)
            self._bins[index] = self._bins.get(index, 0) + count
        self._count += count
        self._sum += value * count
        if value < self._min:
            self._min = value
        if value > self._max:
            self._max = value

    def merge(self, other: QuantileSketch) -> None:
        """Add ``other``'s values into this sketch (same alpha required)."""
        if other.alpha != self.alpha:
            raise SketchError(f"cannot merge sketches with alpha {self.alpha} and {other.alpha}")
        self._fold()
        other._fold()
        for index, n in other._bins.items():
            self._bins[index] = self._bins.get(index, 0) + n
        self._zero_count += other._zero_count
        self._count += other._count
        self._sum += other._sum
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    def quantile(self, q: float) -> float | None:
        """The value at rank ``floor(q * (count - 1))`` within relative error alpha.

        None when the sketch is empty.
        """
        if not 0.0 <= q <= 1.0:
            raise SketchError(f"quantile must be in [0, 1], got {q}")
        self._fold()
        if self._count == 0:
            return None
        rank = q * (self._count - 1)
        seen = self._zero_count
        if seen > rank:
            return 0.0
        for index in sorted(self._bins):
            seen += self._bins[index]
            if seen > rank:
                estimate = 2.0 * self._gamma**index / (self._gamma + 1.0)
                # The exact extremes are known: clamping can only reduce the error.
                return min(max(estimate, self._min), self._max)
        return self._max  # unreachable while counts are consistent

    def bins(self) -> dict[int, int]:
        self._fold()
        return dict(self._bins)

    def to_dict(self) -> dict[str, object]:
        """The published form: JSON-safe, self-describing, mergeable by any consumer.

        ``bin_indexes``/``bin_counts`` are parallel lists sorted by index; bin ``i`` covers
        ``(gamma**(i-1), gamma**i]``; ``zero_count`` counts exact zeros.
        """
        self._fold()
        indexes = sorted(self._bins)
        empty = self._count == 0
        return {
            "type": SKETCH_TYPE,
            "alpha": self.alpha,
            "gamma": self._gamma,
            "count": self._count,
            "sum": self._sum,
            "min": None if empty else self._min,
            "max": None if empty else self._max,
            "zero_count": self._zero_count,
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
            sketch._sum = float(_number(data["sum"]))
            if total:
                sketch._min = float(_number(data["min"]))
                sketch._max = float(_number(data["max"]))
        except KeyError as exc:
            raise SketchError(f"sketch is missing field {exc}") from exc
        if len(indexes) != len(counts) or any(n <= 0 for n in counts) or zero_count < 0:
            raise SketchError("sketch bins are inconsistent")
        sketch._bins = dict(zip(indexes, counts, strict=True))
        sketch._zero_count = zero_count
        sketch._count = zero_count + sum(counts)
        if sketch._count != total:
            raise SketchError(f"sketch count {total} != sum of its bins {sketch._count}")
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
