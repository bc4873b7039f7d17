"""What each view of ``top`` shows: its rows (from the Board) and its columns, each column
with the value it sorts by and the text it prints. Pure, so the screen and the tests agree."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from consumers.rollup import Board, short_workload


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def usd_text(usd: float) -> str:
    """Dollars readable at any size: a window's cross-zone cost is often micro-dollars."""
    return f"{usd:.4f}" if usd >= 0.01 or usd == 0 else f"{usd:.2e}"


def count_text(n: int, width: int) -> str:
    """A count in ``width`` characters: ``12345``, then ``123k``, ``12M``."""
    for unit, size in (("", 1), ("k", 10**3), ("M", 10**6), ("G", 10**9)):
        text = f"{n // size}{unit}"
        if len(text) <= width:
            return text
    return f"{n // 10**12}T"


def ms_text(v: float | None) -> str:
    """Milliseconds in 5 characters: ``0.04``, ``12.3``, ``1234``."""
    if v is None:
        return "-"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def rate_text(v: float | None) -> str:
    """A share in 5 characters; small ones keep two decimals (0.05% retransmitted matters)."""
    if v is None:
        return "-"
    pct = 100 * v
    return f"{pct:.2f}%" if pct < 10 else f"{pct:.1f}%" if pct < 100 else "100%"


def _bytes(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


@dataclass(frozen=True)
class Column:
    title: str
    value: Callable[[Any], Any]  # what it sorts by (None sorts last)
    text: Callable[[Any], str]
    width: int  # columns at most
    numeric: bool = False  # right-aligned
    fixed: bool | None = None  # never narrower than width; default: numbers are, names shrink

    @property
    def keeps_width(self) -> bool:
        return self.numeric if self.fixed is None else self.fixed


@dataclass(frozen=True)
class View:
    key: str  # the key that selects it
    name: str
    title: str
    rows: Callable[[Board, str | None], Sequence[Any]]
    columns: tuple[Column, ...]
    sort: str  # default sort column title, descending


def _wl(attr: str, title: str, width: int = 17) -> Column:
    return Column(
        title, lambda r: getattr(r, attr), lambda r: short_workload(getattr(r, attr)), width
    )


def _int(attr: str, title: str, width: int = 6) -> Column:
    return Column(title, lambda r: getattr(r, attr), lambda r: str(getattr(r, attr)), width, True)


def _count(attr: str, title: str, width: int) -> Column:
    return Column(
        title,
        lambda r: getattr(r, attr),
        lambda r: count_text(getattr(r, attr), width),
        width,
        True,
    )


def host_text(name: str) -> str:
    """A node's host name without its domain (``ip-10-0-1-5.ec2.internal`` -> ``ip-10-0-1-5``):
    the domain is shared by every node and would take the column. Addresses stay whole."""
    host = name.split(".", 1)[0]
    return name if host.isdigit() or ":" in name else host


def _place(attr: str, title: str, width: int) -> Column:
    return Column(title, lambda r: getattr(r, attr), lambda r: host_text(getattr(r, attr)), width)


def _worst_outcome(r: Any) -> str:
    if not r.outcomes:
        return "-"
    name, n = max(r.outcomes.items(), key=lambda kv: (kv[1], kv[0]))
    return f"{name} {n}"


def _since(ns: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ns / 1e9))


P99 = Column("p99 ms", lambda r: r.p99_ms, lambda r: _num(r.p99_ms, ".2f"), 7, True)
P50 = Column("p50 ms", lambda r: r.p50_ms, lambda r: _num(r.p50_ms, ".2f"), 7, True)
FAIL = Column("fail%", lambda r: r.failure_rate, lambda r: _pct(r.failure_rate), 6, True)

VIEWS: tuple[View, ...] = (
    View(
        "1",
        "latency",
        "service pairs by p99 connect latency",
        lambda b, ns: b.pairs(ns),
        (
            _wl("client", "client"),
            _wl("server", "server"),
            Column("service", lambda r: r.service, lambda r: r.service, 8),
            _int("connections", "conns"),
            FAIL,
            P50,
            P99,
        ),
        "p99 ms",
    ),
    View(
        "2",
        "failures",
        "service pairs by connection failure rate",
        lambda b, ns: b.pairs(ns),
        (
            _wl("client", "client", 18),
            _wl("server", "server", 18),
            _int("connections", "conns"),
            _int("failed", "failed"),
            FAIL,
            Column("worst outcome", _worst_outcome, _worst_outcome, 14),
        ),
        "fail%",
    ),
    View(
        "3",
        "cost",
        "workload pairs by data-transfer dollars",
        lambda b, ns: b.costs(ns),
        (
            _wl("source", "source", 14),
            _wl("destination", "destination", 14),
            Column(
                "zones",
                lambda r: f"{r.source_zone}>{r.destination_zone}",
                lambda r: f"{r.source_zone}>{r.destination_zone}",
                13,
                fixed=True,
            ),
            Column("class", lambda r: r.cost_class, lambda r: r.cost_class, 12, fixed=True),
            Column("bytes", lambda r: r.bytes, lambda r: _bytes(r.bytes), 7, True),
            Column("USD", lambda r: r.usd, lambda r: usd_text(r.usd), 9, True),
        ),
        "USD",
    ),
    View(
        "4",
        "dns",
        "DNS failure rate by client and server",
        lambda b, ns: b.dns_rows(ns),
        (
            _wl("client", "client"),
            _wl("server", "server"),
            _int("queries", "queries"),
            _int("failed", "failed"),
            FAIL,
            _int("timeouts", "timeouts", 8),
            Column("p99 ms", lambda r: r.p99_ms, lambda r: _num(r.p99_ms, ".2f"), 7, True),
        ),
        "fail%",
    ),
    # Ten health figures fill 80 columns; the paths' dollars are in "cost" (its zones column).
    View(
        "5",
        "paths",
        "path health by node and zone pair (all namespaces)",
        lambda b, ns: b.paths(ns),
        (
            Column("scope", lambda r: r.scope, lambda r: r.scope, 5, fixed=True),
            _place("source", "from", 12),
            _place("destination", "to", 12),
            _count("connections", "conns", 5),
            _count("failed", "fail", 4),
            _count("syn_retransmits", "synrt", 5),
            Column(
                "retx%",
                lambda r: r.retransmission_rate,
                lambda r: rate_text(r.retransmission_rate),
                5,
                True,
            ),
            Column("p50ms", lambda r: r.rtt_p50_ms, lambda r: ms_text(r.rtt_p50_ms), 5, True),
            Column("p99ms", lambda r: r.rtt_p99_ms, lambda r: ms_text(r.rtt_p99_ms), 5, True),
            _count("resets", "rst", 4),
        ),
        "p99ms",
    ),
    View(
        "6",
        "alerts",
        "firing alerts",
        lambda b, ns: b.firing(ns),
        (
            Column("rule", lambda a: a.rule, lambda a: a.rule, 20),
            Column("severity", lambda a: a.severity, lambda a: a.severity, 8, fixed=True),
            Column(
                "workloads",
                lambda a: ",".join(a.affected_workloads),
                lambda a: ",".join(map(short_workload, a.affected_workloads)),
                30,
            ),
            Column(
                "since",
                lambda a: a.window_start_ns,
                lambda a: _since(a.window_start_ns),
                8,
                fixed=True,
            ),
        ),
        "since",
    ),
)


PADDING = 2  # between two columns (rich: one space each side)


def width(view: View) -> int:
    """The widest the view draws; every view fits 80 columns (a test pins it)."""
    return sum(c.width for c in view.columns) + PADDING * (len(view.columns) - 1)


def sorted_rows(rows: Sequence[Any], column: Column, descending: bool) -> list[Any]:
    """By the column's value; rows without one (no latency measured) always last; ties in
    the order of the first columns, so the screen does not shuffle between refreshes."""
    present = [r for r in rows if column.value(r) is not None]
    absent = [r for r in rows if column.value(r) is None]
    present.sort(key=lambda r: str(r.__dict__ if hasattr(r, "__dict__") else r))
    present.sort(key=column.value, reverse=descending)
    return present + absent


def table(
    view: View, board: Board, namespace: str | None, sort: str, descending: bool
) -> tuple[list[str], list[list[str]]]:
    """Headers and the rows' cells, sorted."""
    column = next((c for c in view.columns if c.title == sort), view.columns[0])
    rows = sorted_rows(view.rows(board, namespace), column, descending)
    return [c.title for c in view.columns], [[c.text(r) for c in view.columns] for r in rows]
