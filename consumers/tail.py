"""``flowscope tail TOPIC``: follow one flowscope topic, decoded (batch messages unrolled into
their records), filtered by a simple expression, as JSON lines or a table.

Records that do not decode are counted and reported on stderr at the end, never dropped
silently; the output is the record as it is encoded on the topic (wire field names).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, TextIO

import msgspec

from consumers.catalog import RecordDecoder, UnknownTopic, resolve_topic
from consumers.facets import Filter, FilterError, facets, parse_filter
from consumers.options import (
    BOOTSTRAP,
    LOG_LEVEL,
    PREFIX,
    Option,
    add_options,
    non_negative,
    parse_args,
)
from flowscope import records as r
from flowscope.codec import DecodeError
from flowscope.kafka import Start, TopicFollower
from flowscope.topics import Topics


def parse_start(text: str) -> Start:
    """earliest | latest | -DURATION (s, m or h: records produced since then)."""
    if text in ("earliest", "latest"):
        return text
    units = {"s": 1, "m": 60, "h": 3600}
    if text.startswith("-") and text[-1:] in units:
        seconds = float(text[1:-1]) * units[text[-1]]
        return int((time.time() - seconds) * 1000)
    raise ValueError("expected earliest, latest or -DURATION such as -5m, -30s, -1h")


OPTIONS = (
    BOOTSTRAP,
    PREFIX,
    LOG_LEVEL,
    Option(
        "filter",
        "FLOWSCOPE_TAIL_FILTER",
        "",
        "records to show, e.g. "
        "'namespace=shop outcome!=closed' (FIELD=V1,V2  FIELD!=V  FIELD~TEXT; fields: "
        "namespace, workload, outcome or any top-level field)",
    ),
    Option(
        "format",
        "FLOWSCOPE_TAIL_FORMAT",
        "json",
        "json: one record per line; table: one row per record",
        choices=("json", "table"),
    ),
    Option(
        "start",
        "FLOWSCOPE_TAIL_START",
        "latest",
        "where to begin: earliest, latest or "
        "-DURATION (-5m: records produced in the last five minutes)",
        parse_start,
    ),
    Option(
        "max_records",
        None,
        "0",
        "stop after this many records are shown (0: never)",
        non_negative(int),
    ),
    Option(
        "idle_exit_seconds",
        None,
        "0",
        "stop after this many seconds without a message (0: follow for ever)",
        non_negative(float),
    ),
)


@dataclass(frozen=True)
class TailSettings:
    topic: str
    bootstrap_servers: str
    topic_prefix: str
    filter: Filter
    format: str
    start: Start
    max_records: int
    idle_exit_s: float


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowscope tail", description=__doc__)
    p.add_argument(
        "topic",
        help="a topic, full (flowscope.enriched.tcp) or without the "
        "prefix (enriched.tcp, metrics.tcp.latency, alerts, ...)",
    )
    add_options(p, OPTIONS, env)
    return p


def _when(ns: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ns / 1e9))


def _row(record: Any) -> list[str]:
    """A table row: time, who, what; per record family, the fields a person reads first."""
    if isinstance(record, r.EnrichedTcpConnection):
        return [
            _when(record.end_time_ns),
            record.client.workload_key(),
            record.server.workload_key(),
            record.outcome,
            f"{record.bytes_client_to_server}/{record.bytes_server_to_client} B",
            "-" if record.connect_latency_us is None else f"{record.connect_latency_us} us",
        ]
    if isinstance(record, r.EnrichedDnsQuery):
        return [
            _when(record.time_ns),
            record.client.workload_key(),
            record.server.workload_key(),
            record.outcome,
            f"{record.query_name} {record.rcode or ''}".strip(),
            "-" if record.latency_us is None else f"{record.latency_us} us",
        ]
    if isinstance(record, r.TcpLatencyMetric):
        return [
            _when(record.window_end_ns),
            record.client_workload,
            record.server_workload,
            f"{record.failed_connections}/{record.connections} failed",
            f"p99 {record.connect_latency_p99_us} us",
            f"part {record.source_partition}",
        ]
    if isinstance(record, r.AlertEvent):
        return [
            _when(record.time_ns),
            record.status,
            record.rule,
            record.severity,
            ", ".join(record.affected_workloads),
            record.alert_id,
        ]
    f = facets(record)
    ts = next(
        (
            getattr(record, n)
            for n in ("window_end_ns", "end_time_ns", "time_ns")
            if isinstance(getattr(record, n, None), int)
        ),
        None,
    )
    return [
        _when(ts) if ts else "-",
        ",".join(sorted(f["workload"])) or "-",
        ",".join(sorted(f["outcome"])) or "-",
        msgspec.json.encode(record).decode()[:200],
    ]


class TablePrinter:
    """Rows as they come: widths grow to the widest cell seen so far."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._widths: list[int] = []

    def __call__(self, record: Any) -> None:
        cells = _row(record)
        if len(self._widths) < len(cells):
            self._widths += [0] * (len(cells) - len(self._widths))
        for i, c in enumerate(cells):
            self._widths[i] = max(self._widths[i], min(len(c), 40))
        line = "  ".join(c.ljust(w) for c, w in zip(cells, self._widths, strict=False))
        self._out.write(line.rstrip() + "\n")


def json_printer(out: TextIO) -> Callable[[Any], None]:
    encoder = msgspec.json.Encoder()

    def show(record: Any) -> None:
        out.write(encoder.encode(record).decode() + "\n")

    return show


@dataclass
class TailCounters:
    messages: int = 0
    records: int = 0
    shown: int = 0
    undecodable: int = 0


def run(settings: TailSettings, out: TextIO, stop: Callable[[], bool]) -> TailCounters:
    kind = resolve_topic(settings.topic, Topics(settings.topic_prefix))
    decoder = RecordDecoder(kind.record_type)
    show = json_printer(out) if settings.format == "json" else TablePrinter(out)
    counters = TailCounters()
    follower = TopicFollower(settings.bootstrap_servers, [kind.topic], settings.start)
    last_message = time.monotonic()
    try:
        while not stop():
            batch = follower.poll(0.5)
            if batch:
                last_message = time.monotonic()
            elif settings.idle_exit_s and time.monotonic() - last_message > settings.idle_exit_s:
                break
            for msg in batch:
                counters.messages += 1
                try:
                    decoded = decoder.decode(msg.value)
                except DecodeError as exc:
                    counters.undecodable += 1
                    print(
                        f"tail: {kind.topic}[{msg.partition}]@{msg.offset}: {exc}", file=sys.stderr
                    )
                    continue
                for record in decoded:
                    counters.records += 1
                    if settings.filter.matches(record):
                        show(record)
                        counters.shown += 1
                        if settings.max_records and counters.shown >= settings.max_records:
                            return counters
            out.flush()
    finally:
        out.flush()
        follower.close()
        if follower.counters.errors:
            print(
                f"tail: {follower.counters.errors} consume errors, last: "
                f"{follower.counters.last_error}",
                file=sys.stderr,
            )
    return counters


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(dict(os.environ)), argv)
    try:
        settings = TailSettings(
            topic=args.topic,
            bootstrap_servers=args.bootstrap_servers,
            topic_prefix=args.topic_prefix,
            filter=parse_filter(args.filter),
            format=args.format,
            start=args.start,
            max_records=int(args.max_records),
            idle_exit_s=args.idle_exit_seconds,
        )
        resolve_topic(settings.topic, Topics(settings.topic_prefix))
    except (FilterError, UnknownTopic, ValueError) as exc:
        print(f"flowscope tail: {exc}", file=sys.stderr)
        return 2
    stopping = False

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        counters = run(settings, sys.stdout, lambda: stopping)
    except BrokenPipeError:  # `flowscope tail ... | head`
        return 0
    if counters.undecodable:
        print(f"tail: {counters.undecodable} messages did not decode", file=sys.stderr)
        return 1
    return 0
