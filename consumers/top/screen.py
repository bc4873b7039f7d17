"""Drawing ``top``: a rich renderable sized to the terminal (80x24 is enough), or plain text
when the output is not a terminal."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from consumers.rollup import Board
from consumers.top.views import VIEWS, View, table

KEYS_HELP = "1-6/tab view  s sort  r reverse  n namespace  q quit"


@dataclass
class ViewState:
    """What the person chose; keys change it (consumers/top/keys.py)."""

    view: int = 0
    sort: str = VIEWS[0].sort
    descending: bool = True
    namespace: str | None = None
    prompt: str | None = None  # the namespace being typed, while typing

    @property
    def current(self) -> View:
        return VIEWS[self.view]


def screen(board: Board, state: ViewState, height: int, status: str) -> RenderableType:
    view = state.current
    tabs = Text("flowscope top ", style="bold")
    for i, v in enumerate(VIEWS):
        tabs.append(f" {v.key} {v.name} ", style="reverse" if i == state.view else "")
    arrow = "desc" if state.descending else "asc"
    ns = state.namespace or "all"
    line = Text(f"{view.title} | sort {state.sort} {arrow} | ns {ns}", style="bold")
    _, rows = table(view, board, state.namespace, state.sort, state.descending)
    room = max(1, height - 7)  # 2 title lines, table head (2), status, keys, a spare
    # The box draws a one-space divider; with one space of padding the gap is PADDING (2).
    grid = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1, 0, 0))
    for col in view.columns:
        # Numbers keep their width; names give way (ellipsis) when the terminal is narrow.
        grid.add_column(
            col.title,
            justify="right" if col.numeric else "left",
            no_wrap=True,
            width=col.width if col.keeps_width else None,
            max_width=col.width,
            overflow="ellipsis",
        )
    for cells in rows[:room]:
        grid.add_row(*cells)
    more = f" ({len(rows) - room} more)" if len(rows) > room else ""
    footer = Text(f"{len(rows)} rows{more} | {status}", style="dim")
    keys = Text(
        f"namespace: {state.prompt}_  (enter apply, esc cancel)"
        if state.prompt is not None
        else KEYS_HELP
    )
    return Group(tabs, line, grid, footer, keys)


def plain(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def plain_report(board: Board, namespace: str | None, views: Sequence[View]) -> str:
    parts = []
    for view in views:
        headers, rows = table(view, board, namespace, view.sort, True)
        parts.append(f"{view.title}:\n{plain(headers, rows) if rows else '(none)'}")
    return "\n\n".join(parts)
