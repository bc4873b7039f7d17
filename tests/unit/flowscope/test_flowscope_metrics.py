"""The metrics vocabulary: declarations, exposition over HTTP, and docs/metrics.md current."""

from __future__ import annotations

import importlib.util
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest

from flowscope.metrics import Metric, MetricsServer, Rule, Vocabulary, samples

ROOT = Path(__file__).resolve().parents[3]


def _load_generator() -> ModuleType:
    # docs/ is a folder of documents, not a package: load the script by path.
    spec = importlib.util.spec_from_file_location(
        "flowscope_metrics_generate", ROOT / "docs" / "generate_metrics.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


generate = _load_generator()

LOST = Metric("flowscope_demo_lost_records_total", "records lost", labels=("reason",))
QUEUE = Metric("flowscope_demo_queue_records", "records queued", "gauge")
DEMO = Vocabulary(
    "demo",
    [
        Rule("lost_full", LOST, {"reason": "full"}),
        Rule("lost_(?P<reason>.+)", LOST),
        Rule("queued", QUEUE),
    ],
)


def test_docs_metrics_md_is_current() -> None:
    assert (ROOT / "docs" / "metrics.md").read_text() == generate.render(), (
        "run: python docs/generate_metrics.py"
    )


def test_every_registered_metric_is_documented() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    for vocabulary in generate.VOCABULARIES:
        registry = vocabulary.registry(dict)
        names = {m.name for m in registry.collect()}
        assert names == {m.name.removesuffix("_total") for m in vocabulary.metrics.values()}
        for metric in vocabulary.metrics.values():
            assert f"| `{metric.name}` |" in text, metric.name


def test_labels_come_from_fixed_values_and_named_groups() -> None:
    snapshot = {"lost_full": 3, "lost_decode": 2, "queued": 7}
    got = {(n, tuple(sorted(lb.items()))): v for n, lb, v in _scrape(DEMO, snapshot)}
    assert got == {
        ("flowscope_demo_lost_records_total", (("reason", "full"),)): 3,
        ("flowscope_demo_lost_records_total", (("reason", "decode"),)): 2,
        ("flowscope_demo_queue_records", ()): 7,
    }


def test_unrouted_keys_are_named_and_left_out() -> None:
    assert DEMO.unrouted(["queued", "surprise"]) == ["surprise"]
    assert all(n != "surprise" for n, _, _ in _scrape(DEMO, {"surprise": 1}))


def test_declarations_are_checked() -> None:
    with pytest.raises(ValueError, match="_total"):
        Metric("flowscope_demo_lost", "no suffix")
    with pytest.raises(ValueError, match="labels"):
        Rule("lost", LOST)
    with pytest.raises(ValueError, match="flowscope_other_"):
        Vocabulary("other", [Rule("queued", QUEUE)])


def test_registries_are_per_service() -> None:
    one, two = DEMO.registry(lambda: {"queued": 1}), DEMO.registry(lambda: {"queued": 2})
    assert one.get_sample_value("flowscope_demo_queue_records") == 1
    assert two.get_sample_value("flowscope_demo_queue_records") == 2


def test_server_serves_metrics_with_help_and_type_and_404_elsewhere() -> None:
    values = {"lost_full": 1}
    server = MetricsServer(DEMO.registry(lambda: values), 0, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.port}"
        values["lost_full"] = 4  # read at the scrape, not at registration
        with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
            assert resp.headers["Content-Type"].startswith("text/plain")
        assert "# HELP flowscope_demo_lost_records_total records lost" in text
        assert "# TYPE flowscope_demo_lost_records_total counter" in text
        assert 'flowscope_demo_lost_records_total{reason="full"} 4.0' in text
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + "/", timeout=5)
        assert err.value.code == 404
    finally:
        server.close()


def _scrape(
    vocabulary: Vocabulary, snapshot: dict[str, int]
) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client import generate_latest

    return list(samples(generate_latest(vocabulary.registry(lambda: snapshot)).decode()))
