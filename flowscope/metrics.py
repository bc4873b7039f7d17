"""The services' own counters as Prometheus metrics: one vocabulary, one exposition library.

A service keeps its counters as plain integers (its hot loops take no lock per event) and
hands a snapshot function to :meth:`Vocabulary.registry`. Each scrape maps the snapshot's
keys onto declared metric families through :class:`Rule`\\ s, so the flat keys the health
records carry on Kafka stay as they are while ``/metrics`` has types, help and labels.
Names are ``flowscope_<service>_<what>_<unit>``; counters end in ``_total``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric as Family
from prometheus_client.registry import Collector

from flowscope.probes import Probe, verdict

log = logging.getLogger("flowscope.metrics")

Snapshot = Callable[[], Mapping[str, int]]


@dataclass(frozen=True)
class Metric:
    name: str  # the exposed name; a counter's ends in _total
    help: str
    kind: Literal["counter", "gauge"] = "counter"
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.kind == "counter") != self.name.endswith("_total"):
            raise ValueError(f"{self.name}: counters, and only they, end in _total")

    def family(self) -> CounterMetricFamily | GaugeMetricFamily:
        if self.kind == "counter":
            return CounterMetricFamily(self.name, self.help, labels=self.labels)
        return GaugeMetricFamily(self.name, self.help, labels=self.labels)


@dataclass(frozen=True)
class Rule:
    """Snapshot keys matching ``pattern`` (whole key) are samples of ``metric``. Label values
    come from the pattern's named groups and from ``fixed``."""

    pattern: str
    metric: Metric
    fixed: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = set(re.compile(self.pattern).groupindex) | set(self.fixed)
        if names != set(self.metric.labels):
            raise ValueError(f"{self.pattern}: labels {sorted(names)} != {self.metric.labels}")

    def labels(self, key: str) -> tuple[str, ...] | None:
        m = re.fullmatch(self.pattern, key)
        if m is None:
            return None
        values = {**self.fixed, **m.groupdict()}
        return tuple(values[name] for name in self.metric.labels)


class Vocabulary:
    """One service's metrics, declared once: the rules (first match wins) and the metrics."""

    def __init__(self, service: str, rules: Sequence[Rule]) -> None:
        self.service = service
        self.rules = tuple(rules)
        self.metrics: dict[str, Metric] = {}
        for rule in self.rules:
            if not rule.metric.name.startswith(f"flowscope_{service}_"):
                raise ValueError(f"{rule.metric.name}: not flowscope_{service}_<what>_<unit>")
            known = self.metrics.setdefault(rule.metric.name, rule.metric)
            if known != rule.metric:
                raise ValueError(f"{rule.metric.name} declared twice, differently")
        self._routes: dict[str, tuple[Metric, tuple[str, ...]] | None] = {}
        self._warned: set[str] = set()

    def route(self, key: str) -> tuple[Metric, tuple[str, ...]] | None:
        if key not in self._routes:
            self._routes[key] = next(
                (
                    (rule.metric, labels)
                    for rule in self.rules
                    if (labels := rule.labels(key)) is not None
                ),
                None,
            )
        return self._routes[key]

    def unrouted(self, keys: Iterable[str]) -> list[str]:
        return sorted(k for k in keys if self.route(k) is None)

    def families(self, snapshot: Mapping[str, int]) -> list[Family]:
        families = {name: metric.family() for name, metric in self.metrics.items()}
        for key, value in snapshot.items():
            routed = self.route(key)
            if routed is None:
                if key not in self._warned:  # a counter added without a rule: say so once
                    self._warned.add(key)
                    log.warning("counter %r has no %s metric", key, self.service)
                continue
            metric, labels = routed
            families[metric.name].add_metric(labels, value)
        return list(families.values())

    def registry(self, snapshot: Snapshot) -> CollectorRegistry:
        """A registry of its own (never the global one: two services in one test process
        must not collide) that reads ``snapshot`` at every scrape."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_SnapshotCollector(self, snapshot))
        return registry

    def reference(self) -> str:
        """The Markdown table of this vocabulary, for ``docs/metrics.md``."""
        lines = [
            f"## {self.service}",
            "",
            "| metric | type | labels | help |",
            "|---|---|---|---|",
        ]
        for m in sorted(self.metrics.values(), key=lambda m: m.name):
            labels = ", ".join(f"`{label}`" for label in m.labels)
            lines.append(f"| `{m.name}` | {m.kind} | {labels} | {m.help} |")
        return "\n".join(lines) + "\n"


class _SnapshotCollector(Collector):
    def __init__(self, vocabulary: Vocabulary, snapshot: Snapshot) -> None:
        self._vocabulary = vocabulary
        self._snapshot = snapshot

    def collect(self) -> Iterable[Family]:
        return self._vocabulary.families(self._snapshot())

    def describe(self) -> Iterable[Family]:
        return [m.family() for m in self._vocabulary.metrics.values()]


class MetricsPortError(RuntimeError):
    pass


class MetricsServer:
    """``GET /metrics`` of ``registry`` on ``host:port`` from a daemon thread, with the
    ``probes``' ``/livez`` and ``/readyz`` (flowscope/probes.py). Port 0 picks a free one."""

    def __init__(
        self,
        registry: CollectorRegistry,
        port: int,
        host: str = "0.0.0.0",
        probes: Sequence[Probe] = (),
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/livez", "/readyz"):
                    check = Probe.live if path == "/livez" else Probe.ready
                    reason = verdict(probes, check)
                    self._send(503 if reason else 200, "text/plain", (reason or "ok").encode())
                    return
                if path != "/metrics":
                    self.send_error(404, "try /metrics, /livez or /readyz")
                    return
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics: " + format, *args)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise MetricsPortError(
                f"metrics port {host}:{port}: {exc.strerror}; choose another with "
                "--metrics-port (0 disables the endpoint)"
            ) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def scrape(port: int, host: str = "127.0.0.1") -> tuple[str, dict[str, float]]:
    """``GET /metrics``: the text and its samples by ``name{label=value,...}`` (labels sorted,
    unquoted; a sample without labels by its name alone)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
    values: dict[str, float] = {}
    for name, labels, value in samples(text):
        tags = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        values[f"{name}{{{tags}}}" if tags else name] = value
    return text, values


def probe(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
    """``GET /livez`` or ``/readyz`` as the kubelet does: (status, body)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/{path}", timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample in a text exposition (what tests scrape)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            yield s.name, dict(s.labels), s.value
