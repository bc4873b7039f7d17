from __future__ import annotations

import json
import math
import random

import pytest

from processors.core.sketch import QuantileSketch, SketchError, sketch_of

QUANTILES = (0.0, 0.01, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0)


def exact(sorted_values: list[float], q: float) -> float:
    return sorted_values[math.floor(q * (len(sorted_values) - 1))]


def assert_within(sketch: QuantileSketch, values: list[float]) -> None:
    ordered = sorted(values)
    for q in QUANTILES:
        got = sketch.quantile(q)
        want = exact(ordered, q)
        assert got is not None
        if want == 0.0:
            assert got == 0.0
        else:
            # Tiny slack for float rounding at a bin edge; the guarantee itself is alpha.
            assert abs(got - want) <= sketch.alpha * want * (1 + 1e-9), (q, got, want)


@pytest.mark.parametrize("alpha", [0.01, 0.02, 0.05])
@pytest.mark.parametrize(
    "dist",
    ["lognormal", "uniform", "heavy_tail", "integers_with_zeros", "constant"],
)
def test_quantiles_within_relative_error(alpha: float, dist: str) -> None:
    rng = random.Random(f"{alpha}-{dist}")
    n = 5000
    if dist == "lognormal":
        values = [rng.lognormvariate(5.0, 1.5) for _ in range(n)]
    elif dist == "uniform":
        values = [rng.uniform(0.001, 1e6) for _ in range(n)]
    elif dist == "heavy_tail":
        values = [rng.paretovariate(1.1) * 50 for _ in range(n)]
    elif dist == "integers_with_zeros":
        values = [float(rng.choice([0, 0, 1, 2, 3, 100, 12345])) for _ in range(n)]
    else:
        values = [42.0] * n
    assert_within(sketch_of(values, alpha), values)


def test_small_counts_and_single_value() -> None:
    for values in ([7.0], [1.0, 1000.0], [5.0, 3.0, 9.0]):
        assert_within(sketch_of(values), values)


def test_empty_sketch_has_no_quantile() -> None:
    sketch = QuantileSketch()
    assert sketch.quantile(0.5) is None
    assert sketch.count == 0
    restored = QuantileSketch.from_dict(json.loads(json.dumps(sketch.to_dict())))
    assert restored.count == 0 and restored.quantile(0.99) is None


def test_merge_equals_union() -> None:
    rng = random.Random(7)
    a = [rng.lognormvariate(4.0, 2.0) for _ in range(3000)]
    b = [rng.expovariate(0.001) for _ in range(2000)] + [0.0] * 10
    merged = sketch_of(a)
    merged.merge(sketch_of(b))
    union = sketch_of(a + b)
    assert merged.bins() == union.bins()
    assert (merged.count, merged.zero_count, merged.min, merged.max) == (
        union.count,
        union.zero_count,
        union.min,
        union.max,
    )
    assert merged.sum == pytest.approx(union.sum)
    for q in QUANTILES:
        assert merged.quantile(q) == union.quantile(q)
    assert_within(merged, a + b)


def test_merge_rejects_other_alpha() -> None:
    with pytest.raises(SketchError, match="alpha"):
        QuantileSketch(0.01).merge(QuantileSketch(0.02))


def test_round_trip_through_json() -> None:
    rng = random.Random(3)
    values = [rng.uniform(0, 5000) for _ in range(1000)] + [0.0]
    sketch = sketch_of(values)
    published = json.loads(json.dumps(sketch.to_dict()))
    assert published["type"] == "flowscope.ddsketch.v1"
    assert published["bin_indexes"] == sorted(published["bin_indexes"])
    restored = QuantileSketch.from_dict(published)
    assert restored.bins() == sketch.bins()
    assert restored.count == sketch.count == 1001
    for q in QUANTILES:
        assert restored.quantile(q) == sketch.quantile(q)


def test_published_bins_decode_by_the_documented_rule() -> None:
    """A consumer that only reads the docstring can rebuild values from the JSON."""
    published = sketch_of([100.0]).to_dict()
    gamma = published["gamma"]
    assert isinstance(gamma, float)
    indexes = published["bin_indexes"]
    assert isinstance(indexes, list) and len(indexes) == 1
    index = indexes[0]
    assert gamma ** (index - 1) < 100.0 <= gamma**index


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_rejects_invalid_values(bad: float) -> None:
    with pytest.raises(SketchError):
        QuantileSketch().add(bad)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(type="other"),
        lambda d: d.update(count=d["count"] + 1),
        lambda d: d.update(bin_counts=[1]),
        lambda d: d.pop("alpha"),
        lambda d: d.update(bin_indexes="nope"),
    ],
)
def test_from_dict_rejects_malformed(mutate: object) -> None:
    data = sketch_of([1.0, 2.0, 3.0, 400.0]).to_dict()
    mutate(data)  # type: ignore[operator]
    with pytest.raises(SketchError):
        QuantileSketch.from_dict(data)


def test_buffered_integer_inserts_fold_into_the_same_sketch() -> None:
    # Integers take the buffered path (more distinct values than the buffer holds, so it
    # folds mid-stream too); the same values as floats take the immediate path.
    rng = random.Random(7)
    values = [rng.choice((0, rng.randrange(1, 50), rng.randrange(1, 10**7))) for _ in range(20_000)]
    buffered, immediate = QuantileSketch(0.01), QuantileSketch(0.01)
    for i, v in enumerate(values):
        buffered.add(v)
        immediate.add(float(v))
        if i == 9_999:  # a read in the middle folds what is buffered
            assert buffered.count == immediate.count == 10_000
    assert len(set(values)) > 2 * QuantileSketch.PENDING_LIMIT
    assert buffered.to_dict() == immediate.to_dict()
    assert buffered.quantile(0.5) == immediate.quantile(0.5)
    merged = QuantileSketch(0.01)
    merged.add(3)
    merged.merge(buffered)
    assert merged.count == len(values) + 1 and merged.min == 0


def test_a_buffered_negative_or_invalid_value_is_still_rejected_at_once() -> None:
    sketch = QuantileSketch()
    with pytest.raises(SketchError):
        sketch.add(-1)
    with pytest.raises(SketchError):
        sketch.add(math.nan)
    assert sketch.count == 0
