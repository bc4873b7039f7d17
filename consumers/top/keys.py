"""Keys of ``top`` -> changes of the view state. Pure: tests press keys without a terminal."""

from __future__ import annotations

from consumers.top.screen import ViewState
from consumers.top.views import VIEWS

ENTER = ("\r", "\n")
ESC = "\x1b"
BACKSPACE = ("\x7f", "\x08")


def press(state: ViewState, key: str) -> bool:
    """Apply one key; False when the person asked to quit."""
    if state.prompt is not None:
        if key in ENTER:
            state.namespace = state.prompt.strip() or None
            state.prompt = None
        elif key == ESC:
            state.prompt = None
        elif key in BACKSPACE:
            state.prompt = state.prompt[:-1]
        elif key.isprintable():
            state.prompt += key
        return True
    if key == "q":
        return False
    selected = next((i for i, v in enumerate(VIEWS) if v.key == key), None)
    if key == "\t":
        selected = (state.view + 1) % len(VIEWS)
    if selected is not None:
        state.view = selected
        state.sort = VIEWS[selected].sort
        state.descending = True
    elif key == "s":
        titles = [c.title for c in state.current.columns]
        state.sort = titles[(titles.index(state.sort) + 1) % len(titles)]
    elif key == "r":
        state.descending = not state.descending
    elif key in ("n", "/"):
        state.prompt = ""
    return True
