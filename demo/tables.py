"""The demo's readable tables, built from the processors' metric topics.

Consumers merge windows themselves: counts add up, and percentiles come from merging the
published sketches (the same merge any consumer can do), never from averaging percentiles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from flowscope.records import AlertEvent, CostPairMetric, DnsMetric, TcpLatencyMetric
from processors.core.sketch import Sketch

M = TypeVar("M")
K = TypeVar("K")

SECONDS_PER_30_DAYS = 30 * 86_400


def render(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _group(records: Iterable[M], key: Callable[[M], K]) -> dict[K, list[M]]:
    groups: dict[K, list[M]] = {}
    for r in records:
        groups.setdefault(key(r), []).append(r)
    return groups


def _merged_quantiles(sketches: Iterable[dict[str, object] | None]) -> tuple[str, str]:
    merged: Sketch | None = None
    for d in sketches:
        if d is None:
            continue
        sk = Sketch.from_dict(d)
        if merged is None:
            merged = sk
        else:
            merged.merge(sk)
    if merged is None:
        return "-", "-"
    p50, p99 = merged.quantile(0.5), merged.quantile(0.99)
    if p50 is None or p99 is None:
        return "-", "-"
    return f"{p50 / 1000:.3f}", f"{p99 / 1000:.3f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def latency_table(metrics: Sequence[TcpLatencyMetric]) -> str:
    rows = []
    for (client, server, service), ms in sorted(
        _group(metrics, lambda m: (m.client_workload, m.server_workload, m.service or "-")).items()
    ):
        conns = sum(m.connections for m in ms)
        failed = sum(m.failed_connections for m in ms)
        outcomes: dict[str, int] = {}
        for m in ms:
            for name, n in m.outcomes.items():
                if name != "closed":
                    outcomes[name] = outcomes.get(name, 0) + n
        p50, p99 = _merged_quantiles(m.connect_latency_sketch for m in ms)
        rows.append(
            [
                client,
                server,
                service,
                str(conns),
                str(failed),
                _pct(failed / conns if conns else None),
                ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) or "-",
                p50,
                p99,
            ]
        )
    return render(
        [
            "client",
            "server",
            "service",
            "conns",
            "failed",
            "fail %",
            "outcomes",
            "p50 ms",
            "p99 ms",
        ],
        rows,
    )


def cost_table(metrics: Sequence[CostPairMetric], seconds: float) -> str:
    rows = []
    groups = _group(
        metrics,
        lambda m: (
            m.source_workload,
            m.destination_workload,
            m.source_zone or "?",
            m.destination_zone or "?",
            m.cost_class,
        ),
    )
    for (src, dst, sz, dz, cls), ms in sorted(groups.items()):
        usd = sum(m.cost_usd for m in ms)
        rows.append(
            [
                src,
                dst,
                f"{sz} -> {dz}",
                cls,
                f"{sum(m.bytes_source_to_destination for m in ms):,}",
                f"{sum(m.bytes_destination_to_source for m in ms):,}",
                f"{usd:.8f}",
                f"{usd * SECONDS_PER_30_DAYS / seconds:.2f}" if seconds > 0 else "-",
            ]
        )
    return render(
        [
            "source",
            "destination",
            "zones",
            "class",
            "bytes ->",
            "bytes <-",
            "USD",
            "USD/30d at this rate",
        ],
        rows,
    )


def dns_table(metrics: Sequence[DnsMetric]) -> str:
    rows = []
    for (client, server), ms in sorted(
        _group(metrics, lambda m: (m.client_workload, m.server)).items()
    ):
        queries = sum(m.queries for m in ms)
        noise = sum(m.search_noise for m in ms)
        failed = sum(m.failed for m in ms)
        rcodes: dict[str, int] = {}
        for m in ms:
            for rcode, n in m.rcodes.items():
                rcodes[rcode] = rcodes.get(rcode, 0) + n
        p50, p99 = _merged_quantiles(m.latency_sketch for m in ms)
        rows.append(
            [
                client,
                f"{server} ({ms[0].server_class})",
                str(queries),
                str(failed),
                _pct(failed / (queries - noise) if queries > noise else None),
                str(noise),
                str(sum(m.timeouts for m in ms)),
                ", ".join(f"{k} {v}" for k, v in sorted(rcodes.items())),
                p50,
                p99,
            ]
        )
    return render(
        [
            "client",
            "server",
            "queries",
            "failed",
            "fail %",
            "search noise",
            "timeouts",
            "rcodes",
            "p50 ms",
            "p99 ms",
        ],
        rows,
    )


def alerts_table(events: Sequence[AlertEvent]) -> str:
    rows = []
    for e in events:
        values = ", ".join(_evidence(ev) for ev in e.evidence)
        rows.append(
            [
                e.status,
                e.rule,
                e.severity,
                e.metric,
                f"> {e.threshold:g}",
                values,
                ", ".join(e.affected_workloads),
            ]
        )
    return render(
        ["status", "rule", "severity", "metric", "threshold", "values", "workloads"], rows
    )


def _evidence(ev: dict[str, object]) -> str:
    """``value (n=count)``: the rule's value in one window and how many records it is over."""
    value = ev.get("value")
    shown = f"{value:.3g}" if isinstance(value, float) else str(value)
    count = next((v for k, v in ev.items() if k in ("queries", "connections")), None)
    shown = shown if count is None else f"{shown} (n={count})"
    reason = ev.get("reason")  # on resolved events: why the window was not a breach
    return shown if reason is None else f"{shown}: {reason}"
