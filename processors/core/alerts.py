"""Alert rules (config/alerts.yaml) evaluated on closed windows: firing and resolved events.

Pure logic. A rule names a metric, the dimensions it is grouped by, a threshold, for how many
consecutive windows the value must stay above it (``for_windows``), and a severity.

- A group *fires* once, on the window where it has breached ``for_windows`` windows in a row;
  it *resolves* once, on the first window where it does not breach (a window without any
  traffic for the group does not breach). Nothing is sent in between: events are deduplicated.
- ``alert_id`` = rule, group and the first breaching window: the firing and resolved events of
  one episode share it, and evaluating the same windows again yields the same ids.
- ``baseline_windows: N`` compares the window's value with the mean of the group's previous N
  windows (a ratio, e.g. a cost spike of 3x); no event until N windows of history exist.
- ``min_connections`` / ``min_value`` keep tiny samples from alerting (1 failure of 2 is 50%).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowscope.records import (
    FAILURE_OUTCOMES,
    AlertEvent,
    CostPairMetric,
    DnsMetric,
    TcpLatencyMetric,
)
from processors import ProcessorsError
from processors.core.sketch import QuantileSketch

SEVERITIES = ("info", "warning", "critical")
LATENCY_DIMS = (
    "client_workload",
    "server_workload",
    "service",
    "client_namespace",
    "server_namespace",
)
COST_DIMS = (
    "source_workload",
    "destination_workload",
    "source_namespace",
    "destination_namespace",
    "source_zone",
    "destination_zone",
)
DNS_DIMS = ("client_workload", "client_namespace", "server", "server_class", "name_group")
WORKLOAD_DIMS = (
    "client_workload",
    "server_workload",
    "source_workload",
    "destination_workload",
    "server",
)


class AlertRuleError(ProcessorsError, ValueError):
    """The rules file is malformed or names an unknown metric, dimension or severity."""


@dataclass
class _Sample:
    """A metric's mergeable inputs for one group in one window."""

    connections: int = 0
    failed: int = 0
    retrans: int = 0
    segs: int = 0
    usd: float = 0.0
    connect: QuantileSketch | None = None
    rtt: QuantileSketch | None = None
    dns_latency: QuantileSketch | None = None
    workloads: set[str] = field(default_factory=set)


def _merge(into: QuantileSketch | None, data: dict[str, object] | None) -> QuantileSketch | None:
    if data is None:
        return into
    sketch = QuantileSketch.from_dict(data)
    if into is None:
        return sketch
    into.merge(sketch)
    return into


def _p99(sketch: QuantileSketch | None) -> float | None:
    return None if sketch is None else sketch.quantile(0.99)


@dataclass(frozen=True)
class MetricDef:
    source: str  # "latency", "cost" or "dns"
    dims: tuple[str, ...]
    value: Callable[[_Sample], float | None]


METRICS: dict[str, MetricDef] = {
    "tcp.connect_failure_rate": MetricDef(
        "latency", LATENCY_DIMS, lambda s: s.failed / s.connections if s.connections else None
    ),
    "tcp.connect_latency_p99_us": MetricDef("latency", LATENCY_DIMS, lambda s: _p99(s.connect)),
    "tcp.rtt_p99_us": MetricDef("latency", LATENCY_DIMS, lambda s: _p99(s.rtt)),
    "tcp.retransmission_rate": MetricDef(
        "latency", LATENCY_DIMS, lambda s: s.retrans / s.segs if s.segs else None
    ),
    # Dollars on paths that leave the zone (cross zone, cross region, internet) per window.
    "cost.cross_zone_usd": MetricDef("cost", COST_DIMS, lambda s: s.usd),
    # DNS (processors/dns/aggregate.py): "connections" of a DNS sample are its queries minus search
    # noise (the failure rate's denominator), so min_connections means queries there.
    "dns.failure_rate": MetricDef(
        "dns", DNS_DIMS, lambda s: s.failed / s.connections if s.connections else None
    ),
    "dns.latency_p99_us": MetricDef("dns", DNS_DIMS, lambda s: _p99(s.dns_latency)),
}


def rules_for(rules: Sequence[AlertRule], sources: frozenset[str]) -> list[AlertRule]:
    """The rules whose metric comes from one of ``sources`` (each stream evaluates its own)."""
    return [r for r in rules if METRICS[r.metric].source in sources]


@dataclass(frozen=True)
class AlertRule:
    name: str
    metric: str
    group_by: tuple[str, ...]
    threshold: float
    for_windows: int = 1
    severity: str = "warning"
    min_connections: int = 0
    min_value: float = 0.0
    baseline_windows: int = 0

    def __post_init__(self) -> None:
        where = f"alert rule {self.name!r}"
        if self.metric not in METRICS:
            raise AlertRuleError(
                f"{where}: unknown metric {self.metric!r}; use one of {', '.join(METRICS)}"
            )
        dims = METRICS[self.metric].dims
        bad = [d for d in self.group_by if d not in dims]
        if bad or not self.group_by:
            raise AlertRuleError(f"{where}: group_by {list(self.group_by)}: use some of {dims}")
        if self.severity not in SEVERITIES:
            raise AlertRuleError(f"{where}: severity {self.severity!r}: use {SEVERITIES}")
        if self.for_windows < 1 or self.baseline_windows < 0 or self.min_connections < 0:
            raise AlertRuleError(
                f"{where}: for_windows >= 1, baseline_windows >= 0, min_connections >= 0"
            )


_RULE_KEYS = {f for f in AlertRule.__dataclass_fields__}


def parse_rules(data: Any, source: str = "alerts") -> list[AlertRule]:
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise AlertRuleError(f"{source}: expected a mapping with a list under 'rules'")
    rules = []
    for i, entry in enumerate(data["rules"]):
        if not isinstance(entry, dict) or "name" not in entry:
            raise AlertRuleError(f"{source}: rules[{i}] must be a mapping with a name")
        unknown = set(entry) - _RULE_KEYS
        if unknown:
            raise AlertRuleError(
                f"{source}: rule {entry['name']!r}: unknown keys {sorted(unknown)}; "
                f"use {sorted(_RULE_KEYS)}"
            )
        try:
            rules.append(AlertRule(**{**entry, "group_by": tuple(entry.get("group_by") or ())}))
        except TypeError as exc:
            raise AlertRuleError(f"{source}: rule {entry['name']!r}: {exc}") from exc
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise AlertRuleError(f"{source}: rule names must be unique: {names}")
    return rules


def load_rules(path: Path) -> list[AlertRule]:
    try:
        return parse_rules(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))
    except OSError as exc:
        raise AlertRuleError(f"cannot read the alert rules {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise AlertRuleError(f"{path}: not valid YAML: {exc}") from exc


GroupKey = tuple[str | None, ...]
# What a sample's ``connections`` counts, as named in the evidence.
_COUNT_NAMES = {"dns": "queries"}


@dataclass
class _GroupState:
    streak: list[dict[str, object]] = field(default_factory=list)
    episode: str | None = None  # alert_id while firing
    history: deque[float] = field(default_factory=deque)


def _samples(
    rule: AlertRule,
    latency: Sequence[TcpLatencyMetric],
    cost: Sequence[CostPairMetric],
    dns: Sequence[DnsMetric] = (),
) -> dict[GroupKey, _Sample]:
    out: dict[GroupKey, _Sample] = {}
    source = METRICS[rule.metric].source
    if source == "dns":
        for d in dns:
            s = out.setdefault(tuple(getattr(d, g) for g in rule.group_by), _Sample())
            s.connections += d.queries - d.search_noise
            s.failed += d.failed
            if rule.metric == "dns.latency_p99_us":
                s.dns_latency = _merge(s.dns_latency, d.latency_sketch)
            s.workloads.add(d.client_workload)
    elif source == "latency":
        for m in latency:
            s = out.setdefault(tuple(getattr(m, d) for d in rule.group_by), _Sample())
            s.connections += m.connections
            s.failed += sum(n for o, n in m.outcomes.items() if o in FAILURE_OUTCOMES)
            s.retrans += m.retrans_segs
            s.segs += m.segs_out
            if rule.metric == "tcp.connect_latency_p99_us":
                s.connect = _merge(s.connect, m.connect_latency_sketch)
            elif rule.metric == "tcp.rtt_p99_us":
                s.rtt = _merge(s.rtt, m.rtt_sketch)
            s.workloads.update((m.client_workload, m.server_workload))
    else:
        for c in cost:
            if c.cost_class == "same_zone" or not c.priced:
                continue
            s = out.setdefault(tuple(getattr(c, d) for d in rule.group_by), _Sample())
            s.connections += c.connections
            s.usd += c.cost_usd
            s.workloads.update((c.source_workload, c.destination_workload))
    return out


class AlertEvaluator:
    """Feed it every closed window in order; it returns the events to publish."""

    def __init__(self, rules: Sequence[AlertRule]) -> None:
        self.rules = list(rules)
        self._state: dict[tuple[str, GroupKey], _GroupState] = {}
        self.last_window_start_ns: int | None = None
        self.fired = 0
        self.resolved = 0

    def firing(self) -> list[str]:
        return sorted(s.episode for s in self._state.values() if s.episode is not None)

    def evaluate(
        self,
        window_start_ns: int,
        window_end_ns: int,
        latency: Sequence[TcpLatencyMetric],
        cost: Sequence[CostPairMetric],
        now_ns: int,
        dns: Sequence[DnsMetric] = (),
    ) -> list[AlertEvent]:
        if self.last_window_start_ns is not None and window_start_ns <= self.last_window_start_ns:
            return []  # already evaluated (windows are fed once, in order)
        self.last_window_start_ns = window_start_ns
        events: list[AlertEvent] = []
        for rule in self.rules:
            samples = _samples(rule, latency, cost, dns)
            keys = set(samples) | {g for (r, g) in self._state if r == rule.name}
            for group in sorted(keys, key=lambda g: tuple(x or "" for x in g)):
                event = self._step(
                    rule, group, samples.get(group), window_start_ns, window_end_ns, now_ns
                )
                if event is not None:
                    events.append(event)
        return events

    def _step(
        self,
        rule: AlertRule,
        group: GroupKey,
        sample: _Sample | None,
        start_ns: int,
        end_ns: int,
        now_ns: int,
    ) -> AlertEvent | None:
        state = self._state.setdefault((rule.name, group), _GroupState())
        raw = None if sample is None else METRICS[rule.metric].value(sample)
        value, baseline = raw, None
        if raw is not None and rule.baseline_windows:
            history = state.history
            if len(history) >= rule.baseline_windows:
                baseline = sum(history) / len(history)
                value = raw / baseline if baseline > 0 else None
            else:
                value = None
            history.append(raw)
            while len(history) > rule.baseline_windows:
                history.popleft()
        breach = (
            value is not None
            and raw is not None
            and sample is not None
            and value > rule.threshold
            and raw >= rule.min_value
            and sample.connections >= rule.min_connections
        )
        evidence: dict[str, object] = {
            "window_start_ns": start_ns,
            "window_end_ns": end_ns,
            "value": value,
            _COUNT_NAMES.get(METRICS[rule.metric].source, "connections"): 0
            if sample is None
            else sample.connections,
        }
        if baseline is not None:
            evidence["raw_value"] = raw
            evidence["baseline"] = baseline
        event = None
        if breach:
            assert sample is not None
            evidence["workloads"] = sorted(sample.workloads)
            state.streak.append(evidence)
            if state.episode is None and len(state.streak) >= rule.for_windows:
                first = state.streak[-rule.for_windows]
                state.episode = f"{rule.name}|{'|'.join(g or '' for g in group)}|" + str(
                    first["window_start_ns"]
                )
                self.fired += 1
                event = self._event(
                    rule,
                    group,
                    "firing",
                    state.streak[-rule.for_windows :],
                    start_ns,
                    end_ns,
                    now_ns,
                    state.episode,
                )
        else:
            if state.episode is not None:
                self.resolved += 1
                evidence["reason"] = _why_not(rule, sample, value, raw)
                event = self._event(
                    rule, group, "resolved", [evidence], start_ns, end_ns, now_ns, state.episode
                )
                state.episode = None
            state.streak.clear()
            if sample is None:  # no traffic: forget the group (and its baseline)
                del self._state[(rule.name, group)]
        return event

    @staticmethod
    def _event(
        rule: AlertRule,
        group: GroupKey,
        status: str,
        evidence: list[dict[str, object]],
        start_ns: int,
        end_ns: int,
        now_ns: int,
        alert_id: str,
    ) -> AlertEvent:
        dims = dict(zip(rule.group_by, group, strict=True))
        named = sorted({v for d, v in dims.items() if d in WORKLOAD_DIMS and v is not None})
        seen: set[str] = set()
        for e in evidence:
            workloads = e.get("workloads")
            if isinstance(workloads, list):
                seen.update(str(w) for w in workloads)
        return AlertEvent(
            alert_id=alert_id,
            status=status,  # type: ignore[arg-type]
            rule=rule.name,
            severity=rule.severity,
            metric=rule.metric,
            group=dims,
            affected_workloads=named or sorted(seen),
            threshold=rule.threshold,
            evidence=[dict(e) for e in evidence],
            window_start_ns=start_ns,
            window_end_ns=end_ns,
            time_ns=now_ns,
        )


def _why_not(
    rule: AlertRule, sample: _Sample | None, value: float | None, raw: float | None
) -> str:
    """Why a window is not a breach, for the resolved event's evidence: a resolution on too
    little traffic (the value may still be above the threshold) reads differently from one
    where the value went back under it."""
    if sample is None:
        return "no traffic"
    if sample.connections < rule.min_connections:
        return f"too few to judge ({sample.connections} < {rule.min_connections})"
    if raw is not None and raw < rule.min_value:
        return f"below min_value ({raw:g} < {rule.min_value:g})"
    if value is None:
        return "no value (no baseline yet, or nothing measured)"
    return f"not above the threshold ({value:g} <= {rule.threshold:g})"
