"""``flowscope top``: a live view of the metric topics (latency, failures, dollars, DNS,
network path health, firing alerts), refreshed in place. Keys: 1-6 or tab switch views, s cycles
the sort column, r reverses it, n filters by namespace, q quits. When standard output is not
a terminal it reads for --read-seconds and prints every view as a plain table.

Paths (node and zone pairs) are not namespaced: with a namespace, "paths" lists the paths
that namespace's workloads used, with the figures of all traffic on them.

Windows count while they end within the last --span-seconds; records are merged as every
reader must (first record per metric_id, sums, merged sketches: consumers/rollup.py).
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from rich.console import Console
from rich.live import Live

from consumers.catalog import RecordDecoder, resolve_topic
from consumers.options import (
    BOOTSTRAP,
    LOG_LEVEL,
    PREFIX,
    Option,
    add_options,
    parse_args,
    positive,
)
from consumers.rollup import Board
from consumers.top.keys import press
from consumers.top.screen import ViewState, plain_report, screen
from consumers.top.views import VIEWS
from flowscope.codec import DecodeError
from flowscope.kafka import TopicFollower
from flowscope.topics import Topics

SOURCES = (
    "metrics.tcp.latency",
    "metrics.cost.pairs",
    "metrics.dns",
    "metrics.path.health",
    "alerts",
)
VIEW_NAMES = tuple(v.name for v in VIEWS)

OPTIONS = (
    BOOTSTRAP,
    PREFIX,
    LOG_LEVEL,
    Option(
        "namespace",
        "FLOWSCOPE_TOP_NAMESPACE",
        "",
        "show only this namespace's workloads (empty: all); paths: those its workloads used, "
        "all traffic on them",
    ),
    Option(
        "view",
        "FLOWSCOPE_TOP_VIEW",
        "",
        "the view shown first; 'all' (not on a "
        "terminal) prints every view; empty: latency on a terminal, all otherwise",
        choices=(*VIEW_NAMES, "all"),
    ),
    Option(
        "span_seconds",
        "FLOWSCOPE_TOP_SPAN_SECONDS",
        "300",
        "windows ending within the last this many seconds are counted",
        positive(float),
    ),
    Option(
        "refresh_seconds",
        "FLOWSCOPE_TOP_REFRESH_SECONDS",
        "1",
        "seconds between redraws",
        positive(float),
    ),
    Option(
        "read_seconds",
        "FLOWSCOPE_TOP_READ_SECONDS",
        "5",
        "not on a terminal: seconds to read the topics before printing",
        positive(float),
    ),
)


@dataclass(frozen=True)
class TopSettings:
    bootstrap_servers: str
    topic_prefix: str
    namespace: str | None
    view: str
    span_s: float
    refresh_s: float
    read_s: float


class Feed:
    """The metric topics -> the Board, decode failures counted."""

    def __init__(self, settings: TopSettings) -> None:
        topics = Topics(settings.topic_prefix)
        kinds = [resolve_topic(s, topics) for s in SOURCES]
        self._decoders = {k.topic: RecordDecoder(k.record_type) for k in kinds}
        start_ms = int((time.time() - settings.span_s) * 1000)
        self.follower = TopicFollower(settings.bootstrap_servers, list(self._decoders), start_ms)
        self.board = Board()
        self.undecodable = 0
        self.records = 0
        self.span_ns = int(settings.span_s * 1e9)

    def pump(self, timeout_s: float) -> int:
        got = self.follower.poll(timeout_s)
        for msg in got:
            try:
                decoded = self._decoders[msg.topic].decode(msg.value)
            except DecodeError:
                self.undecodable += 1
                continue
            for record in decoded:
                self.records += 1
                self.board.add(record)
        return len(got)

    def status(self) -> str:
        self.board.prune(time.time_ns() - self.span_ns)
        bad = f", {self.undecodable} undecodable" if self.undecodable else ""
        errors = self.follower.counters.errors
        err = f", {errors} consume errors" if errors else ""
        return f"{self.records} records, {self.board.duplicates} duplicate ids{bad}{err}"


@contextmanager
def cbreak(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd, termios.TCSANOW)  # TCSAFLUSH would drop keys typed before
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_live(feed: Feed, settings: TopSettings, stop: list[bool]) -> None:
    state = ViewState(namespace=settings.namespace)
    if settings.view in VIEW_NAMES:
        press(state, VIEWS[VIEW_NAMES.index(settings.view)].key)
    console = Console()
    fd = sys.stdin.fileno()
    with cbreak(fd), Live(console=console, screen=True, auto_refresh=False) as live:
        next_draw = 0.0
        while not stop:
            feed.pump(0.05)
            dirty = False
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                for key in os.read(fd, 64).decode(errors="replace"):
                    if not press(state, key):
                        return
                dirty = True
            now = time.monotonic()
            if dirty or now >= next_draw:
                height = console.size.height
                live.update(screen(feed.board, state, height, feed.status()), refresh=True)
                next_draw = now + settings.refresh_s


def run_plain(feed: Feed, settings: TopSettings) -> str:
    deadline = time.monotonic() + settings.read_s
    while (left := deadline - time.monotonic()) > 0:
        feed.pump(min(left, 0.5))
    status = feed.status()
    views = VIEWS if settings.view == "all" else [VIEWS[VIEW_NAMES.index(settings.view)]]
    return f"{plain_report(feed.board, settings.namespace, views)}\n\n({status})"


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flowscope top",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, OPTIONS, env)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(dict(os.environ)), argv)
    interactive = sys.stdout.isatty() and sys.stdin.isatty()
    settings = TopSettings(
        bootstrap_servers=args.bootstrap_servers,
        topic_prefix=args.topic_prefix,
        namespace=args.namespace or None,
        view=args.view or ("latency" if interactive else "all"),
        span_s=args.span_seconds,
        refresh_s=args.refresh_seconds,
        read_s=args.read_seconds,
    )
    stop: list[bool] = []

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.append(True)

    signal.signal(signal.SIGTERM, on_signal)
    feed = Feed(settings)
    try:
        if interactive:
            run_live(feed, settings, stop)
        else:
            print(run_plain(feed, settings))
    except KeyboardInterrupt:
        pass
    finally:
        feed.follower.close()
    return 1 if feed.undecodable else 0
