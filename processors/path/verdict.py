"""The network-at-fault verdict: is a degradation the network's, or one service's?

Per window, every (path, client workload -> server workload) pair with enough connections is
judged against thresholds and against its own recent RTT baseline (``network_verdict`` in
config/alerts.yaml). Then:

- a path on which *several* pairs degraded, towards at least ``min_servers`` different server
  workloads, while another path of the same scope stayed healthy, fires
  ``network path X -> Y degraded`` (rule ``network-path-degraded``), listing the services;
- the degraded pairs no such path explains are grouped by server workload and fire
  ``service-degraded`` for that server: one pair alone, or one server failing every client
  whatever the path, points at the service, not at the network, once the path shows it:
  another pair on it healthy, or no other pair on it. A path found at fault
  stays so while any of its pairs is still degraded. Pairs with an end on no known node
  (unresolved addresses) are not judged: there is no path to blame.

Events follow processors/core/alerts.py: one firing and one resolved event per episode, an
``alert_id`` of (rule, group, first window), fired after ``for_windows`` windows in a row,
resolved on the first window that does not hold (no traffic included). Baselines learn from
healthy windows only, so a long degradation does not become the new normal.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from flowscope.records import AlertEvent
from processors.core.alerts import SEVERITIES, AlertEvaluator, AlertRuleError

if TYPE_CHECKING:
    from processors.path.health import PathCell, PathCells

NETWORK_RULE = "network-path-degraded"
UNKNOWN = "unknown"  # a path end without a node (zone) name, as processors/path/health.py has it
SERVICE_RULE = "service-degraded"
METRIC = "path.health"


@dataclass(frozen=True)
class VerdictConfig:
    scopes: tuple[str, ...] = ("node", "zone")  # which path kinds are judged
    min_connections: int = 10  # a pair with fewer in a window is not judged
    retransmission_rate: float = 0.02  # retransmitted / sent segments above this: degraded
    failure_rate: float = 0.05  # failed connects (refused, timeouts, resets...) / connections
    syn_retransmit_rate: float = 0.05  # connections that had to resend their SYN / connections
    rtt_ratio: float = 3.0  # RTT p90 above this many times the pair's baseline
    rtt_min_us: float = 1000.0  # ... and above this (sub-millisecond jitter is not a fault)
    baseline_windows: int = 6  # the baseline: mean p90 of the pair's previous healthy windows
    min_pairs: int = 2  # degraded pairs on one path for the network verdict
    min_servers: int = 2  # distinct server workloads among them
    require_healthy_path: bool = True  # another judged path of the scope must be healthy
    for_windows: int = 1  # windows in a row before "network path X -> Y degraded" fires
    # ... before a service is blamed: on a lossy path a pair can be hit a window before the
    # others are, which is no reason to blame its server.
    service_for_windows: int = 1
    clear_windows: int = 1  # windows in a row without the condition before it resolves
    severity: str = "warning"

    def __post_init__(self) -> None:
        bad = [s for s in self.scopes if s not in ("node", "zone")]
        if bad or not self.scopes:
            raise AlertRuleError(f"network_verdict: scopes {list(self.scopes)}: use node, zone")
        if self.severity not in SEVERITIES:
            raise AlertRuleError(f"network_verdict: severity {self.severity!r}: use {SEVERITIES}")
        counts = (
            self.min_pairs,
            self.min_servers,
            self.for_windows,
            self.service_for_windows,
            self.clear_windows,
            self.baseline_windows,
        )
        if min(counts) < 1:
            raise AlertRuleError(
                "network_verdict: min_pairs, min_servers, for_windows, service_for_windows, "
                "clear_windows, baseline_windows: each >= 1"
            )


_KEYS = {f.name for f in fields(VerdictConfig)}


def parse_verdict(data: Any, source: str = "alerts") -> VerdictConfig:
    """The ``network_verdict`` mapping of the alert rules file (absent: the defaults)."""
    if not isinstance(data, Mapping):
        raise AlertRuleError(f"{source}: expected a mapping")
    section = data.get("network_verdict")
    if section is None:
        return VerdictConfig()
    if not isinstance(section, Mapping):
        raise AlertRuleError(f"{source}: network_verdict must be a mapping")
    unknown = set(section) - _KEYS
    if unknown:
        raise AlertRuleError(
            f"{source}: network_verdict: unknown keys {sorted(unknown)}; use {sorted(_KEYS)}"
        )
    values = dict(section)
    if "scopes" in values:
        values["scopes"] = tuple(values["scopes"] or ())
    try:
        return VerdictConfig(**values)
    except TypeError as exc:
        raise AlertRuleError(f"{source}: network_verdict: {exc}") from exc


def load_verdict(path: Path) -> VerdictConfig:
    try:
        return parse_verdict(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))
    except OSError as exc:
        raise AlertRuleError(f"cannot read the alert rules {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise AlertRuleError(f"{path}: not valid YAML: {exc}") from exc


PairId = tuple[str, str, str, str, str]  # scope, source, destination, client, server


@dataclass
class _Judged:
    """One pair's window, judged."""

    connections: int
    signals: dict[str, float]  # what breached, with its value (empty: healthy)
    rtt_p90_us: float | None
    baseline_us: float | None


@dataclass
class _Episode:
    streak: int = 0
    alert_id: str | None = None
    first_window_ns: int = 0
    quiet: int = 0  # windows in a row without the condition while firing


@dataclass
class _Findings:
    """One window's conclusions: group -> (affected workloads, evidence)."""

    network: dict[tuple[str, ...], tuple[list[str], dict[str, object]]] = field(
        default_factory=dict
    )
    service: dict[tuple[str, ...], tuple[list[str], dict[str, object]]] = field(
        default_factory=dict
    )


class PathVerdict(AlertEvaluator):
    """Feed it every closed window's path cells in order; it returns the events to publish."""

    def __init__(self, config: VerdictConfig) -> None:
        super().__init__([])
        self.config = config
        self._baselines: dict[PairId, deque[float]] = {}
        self._episodes: dict[tuple[str, tuple[str, ...]], _Episode] = {}

    def firing(self) -> list[str]:
        return sorted(e.alert_id for e in self._episodes.values() if e.alert_id is not None)

    def _judge_pair(self, pair: PairId, cell: PathCell) -> _Judged:
        c = self.config
        p90 = cell.rtt.quantile(0.9) if cell.rtt.count else None
        history = self._baselines.get(pair)
        full = history is not None and len(history) >= c.baseline_windows
        baseline = sum(history) / len(history) if history and full else None
        signals: dict[str, float] = {}
        if cell.connections < c.min_connections:
            return _Judged(cell.connections, {}, p90, baseline)
        if cell.segs_out and cell.retrans_segs / cell.segs_out > c.retransmission_rate:
            signals["retransmission_rate"] = cell.retrans_segs / cell.segs_out
        if cell.failed / cell.connections > c.failure_rate:
            signals["failure_rate"] = cell.failed / cell.connections
        syn = cell.connections_with_syn_retransmits / cell.connections
        if syn > c.syn_retransmit_rate:
            signals["syn_retransmit_rate"] = syn
        if (
            p90 is not None
            and baseline is not None
            and baseline > 0
            and p90 > c.rtt_min_us
            and p90 / baseline > c.rtt_ratio
        ):
            signals["rtt_p90_ratio"] = p90 / baseline
        if not signals and p90 is not None:  # healthy windows only: see the module doc
            history = self._baselines.setdefault(pair, deque(maxlen=c.baseline_windows))
            history.append(p90)
        return _Judged(cell.connections, signals, p90, baseline)

    def _findings(self, cells: PathCells) -> _Findings:
        c = self.config
        judged: dict[PairId, _Judged] = {}
        for key, cell in sorted(cells.items()):
            if key.scope in c.scopes:
                pid: PairId = (
                    key.scope,
                    key.source,
                    key.destination,
                    key.client_workload,
                    key.server_workload,
                )
                judged[pid] = self._judge_pair(pid, cell)
        by_path: dict[tuple[str, str, str], dict[tuple[str, str], _Judged]] = {}
        for (scope, src, dst, client, server), j in judged.items():
            # Without both nodes (zones) known there is no path to blame or to compare with.
            if j.connections >= c.min_connections and UNKNOWN not in (src, dst):
                by_path.setdefault((scope, src, dst), {})[(client, server)] = j
        healthy = {p for p, pairs in by_path.items() if not any(j.signals for j in pairs.values())}
        found = _Findings()
        explained: set[tuple[str, str]] = set()
        firing = {
            g
            for (r, g), e in self._episodes.items()
            if r == NETWORK_RULE and e.alert_id is not None
        }
        for path, pairs in sorted(by_path.items()):
            bad = {pair: j for pair, j in pairs.items() if j.signals}
            servers = {server for _, server in bad}
            others_healthy = sorted(f"{p[1]} -> {p[2]}" for p in healthy if p[0] == path[0])
            # A path already found at fault stays so while any pair on it is degraded: on a
            # lossy path some pairs fall below min_connections in a window (SYNs retried
            # for seconds), which must not turn the episode into one per service.
            holds = path in firing and bool(bad)
            if (holds or (len(bad) >= c.min_pairs and len(servers) >= c.min_servers)) and (
                others_healthy or not c.require_healthy_path
            ):
                explained.update(bad)
                services = sorted(f"{cl} -> {sv}" for cl, sv in bad)
                found.network[path] = (
                    sorted({w for pair in bad for w in pair}),
                    {
                        "summary": f"network path {path[1]} -> {path[2]} degraded",
                        "services": services,
                        "pairs": {f"{cl} -> {sv}": _evidence(j) for (cl, sv), j in bad.items()},
                        "pairs_judged": len(pairs),
                        "healthy_paths": others_healthy,
                    },
                )
        # What no network verdict explains is a service's: grouped by server workload. Not
        # on a path where other pairs had traffic too thin to judge and none was healthy: a
        # lossy path stalls some pairs first, and the service is not to blame until the
        # others can be told apart (one pair alone on its path is the service's).
        thin = {
            (scope, src, dst)
            for (scope, src, dst, _, _), j in judged.items()
            if 0 < j.connections < c.min_connections
        }
        per_server: dict[str, dict[str, _Judged]] = {}
        for (scope, src, dst), pairs in by_path.items():
            if scope != c.scopes[0]:
                continue  # one scope is enough to name a service; not once per scope
            if (scope, src, dst) in thin and not any(not j.signals for j in pairs.values()):
                continue
            for (client, server), j in pairs.items():
                if j.signals and (client, server) not in explained:
                    per_server.setdefault(server, {})[f"{client} -> {server} ({src} -> {dst})"] = j
        for server, named in sorted(per_server.items()):
            clients = {name.split(" -> ", 1)[0] for name in named}
            found.service[(server,)] = (
                sorted({server, *clients}),
                {
                    "summary": f"service {server} degraded",
                    "pairs": {name: _evidence(j) for name, j in sorted(named.items())},
                },
            )
        return found

    def judge(
        self, window_start_ns: int, window_end_ns: int, cells: PathCells, now_ns: int
    ) -> list[AlertEvent]:
        if self.last_window_start_ns is not None and window_start_ns <= self.last_window_start_ns:
            return []  # already judged (windows are fed once, in order)
        self.last_window_start_ns = window_start_ns
        found = self._findings(cells)
        events: list[AlertEvent] = []
        for rule, dims, holding in (
            (NETWORK_RULE, ("scope", "source", "destination"), found.network),
            (SERVICE_RULE, ("server_workload",), found.service),
        ):
            groups = set(holding) | {g for (r, g) in self._episodes if r == rule}
            for group in sorted(groups):
                event = self._verdict_step(
                    rule, dims, group, holding.get(group), window_start_ns, window_end_ns, now_ns
                )
                if event is not None:
                    events.append(event)
        return events

    def _verdict_step(
        self,
        rule: str,
        dims: tuple[str, ...],
        group: tuple[str, ...],
        holding: tuple[list[str], dict[str, object]] | None,
        start_ns: int,
        end_ns: int,
        now_ns: int,
    ) -> AlertEvent | None:
        state = self._episodes.setdefault((rule, group), _Episode())
        window = {"window_start_ns": start_ns, "window_end_ns": end_ns}
        c = self.config
        if holding is not None:
            if state.streak == 0:
                state.first_window_ns = start_ns
            state.streak += 1
            state.quiet = 0
            need = c.service_for_windows if rule == SERVICE_RULE else c.for_windows
            if state.alert_id is None and state.streak >= need:
                state.alert_id = f"{rule}|{'|'.join(group)}|{state.first_window_ns}"
                self.fired += 1
                workloads, evidence = holding
                return self._verdict_event(
                    rule,
                    dims,
                    group,
                    "firing",
                    workloads,
                    {**window, **evidence},
                    start_ns,
                    end_ns,
                    now_ns,
                    state.alert_id,
                )
            return None
        event = None
        if state.alert_id is not None:
            state.quiet += 1
            if state.quiet < c.clear_windows:
                return None
            self.resolved += 1
            event = self._verdict_event(
                rule,
                dims,
                group,
                "resolved",
                [],
                {**window, "reason": "no longer degraded"},
                start_ns,
                end_ns,
                now_ns,
                state.alert_id,
            )
        del self._episodes[(rule, group)]
        return event

    def _verdict_event(
        self,
        rule: str,
        dims: tuple[str, ...],
        group: tuple[str, ...],
        status: str,
        workloads: list[str],
        evidence: dict[str, object],
        start_ns: int,
        end_ns: int,
        now_ns: int,
        alert_id: str,
    ) -> AlertEvent:
        c = self.config
        return AlertEvent(
            alert_id=alert_id,
            status=status,  # type: ignore[arg-type]
            rule=rule,
            severity=c.severity,
            metric=METRIC,
            group=dict(zip(dims, group, strict=True)),
            affected_workloads=workloads,
            threshold=c.retransmission_rate,
            evidence=[evidence],
            window_start_ns=start_ns,
            window_end_ns=end_ns,
            time_ns=now_ns,
        )


def _evidence(j: _Judged) -> dict[str, object]:
    return {
        "connections": j.connections,
        **j.signals,
        "rtt_p90_us": j.rtt_p90_us,
        "rtt_baseline_us": j.baseline_us,
    }
