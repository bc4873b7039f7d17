"""The processors' metrics: how each stage's :meth:`~processors.core.stage.WindowedStage.counters`
(keys prefixed ``tcp_``, ``udp_``, ``dns_`` or ``path_``) are exposed on ``/metrics``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flowscope.metrics import Metric, MetricsPortError, MetricsServer, Rule, Vocabulary
from flowscope.probes import Probe
from processors import ProcessorsError
from processors.core.stage import WindowedStage

AnyStage = WindowedStage[Any, Any, Any, Any]


def _c(what: str, help: str, *labels: str) -> Metric:
    return Metric(f"flowscope_processors_{what}_total", help, "counter", ("signal", *labels))


def _g(what: str, help: str, *labels: str) -> Metric:
    return Metric(f"flowscope_processors_{what}", help, "gauge", ("signal", *labels))


_S = "(?P<signal>tcp|udp|dns|path)_"
_RECORDS = _c("records", "records by what the window did with them", "outcome")
_OUTPUTS = _c("output_messages", "window outputs (metrics, alerts) by outcome", "outcome")
_REVOKED = _c("records_dropped_on_revoke", "counted records lost to a partition move")
_DEAD = _c("deadletter_records", "dead letters by outcome", "outcome")
_HANDLING = _g(
    "handling_milliseconds",
    "from the first message to the latest: wall span, process and thread CPU; handle CPU",
    "measure",
)

RULES: tuple[Rule, ...] = (
    Rule(f"{_S}messages", _c("messages_in", "Kafka messages consumed")),
    Rule(f"{_S}records", _c("records_in", "records decoded from them")),
    Rule(f"{_S}(?P<outcome>counted|duplicates_skipped|late_dropped|rejected)", _RECORDS),
    Rule(f"{_S}dropped_on_revoke", _REVOKED),
    Rule(f"{_S}windows_closed", _c("windows_closed", "windows closed and published")),
    Rule(f"{_S}metrics_(?P<outcome>published|sent|delivered|failed)", _OUTPUTS),
    Rule(f"{_S}dead_lettered", _DEAD, {"outcome": "produced"}),
    Rule(f"{_S}dead_letters_delivered", _DEAD, {"outcome": "delivered"}),
    Rule(f"{_S}alerts_(?P<outcome>fired|resolved)", _c("alerts", "alert events", "outcome")),
    Rule(
        "(?P<signal>path)_unusable",
        _c("unusable_records", "records a stage could not use and another stage dead-letters"),
    ),
    Rule(f"{_S}open_windows", _g("open_windows", "windows open now")),
    Rule(f"{_S}pending_records", _g("pending_records", "counted records not published yet")),
    Rule(
        f"{_S}(?P<measure>handling_span|handling_cpu|handling_thread_cpu|handle_cpu)_ms", _HANDLING
    ),
)

VOCABULARY = Vocabulary("processors", RULES)


class MetricsBoard:
    """The stages' counters as of the last :meth:`refresh`, which runs on the event loop:
    the HTTP thread never reads the stages' windows while the loop changes them."""

    def __init__(self, stages: Mapping[str, AnyStage]) -> None:
        self._stages = dict(stages)
        self.latest: dict[str, int] = {}
        self.refresh()

    def refresh(self) -> None:
        self.latest = {  # replaced whole, never updated in place
            f"{signal}_{key}": value
            for signal, stage in self._stages.items()
            for key, value in stage.counters().items()
        }

    def serve(self, port: int, probes: Sequence[Probe] = ()) -> MetricsServer | None:
        """``/metrics`` on ``port`` (0: none), ``/livez`` and ``/readyz`` from ``probes``."""
        if not port:
            return None
        try:
            return MetricsServer(VOCABULARY.registry(lambda: self.latest), port, probes=probes)
        except MetricsPortError as exc:
            raise ProcessorsError(str(exc)) from exc
