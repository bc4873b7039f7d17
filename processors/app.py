"""The faust-streaming worker for TCP, UDP and DNS metrics: Kafka in, Kafka out.

All logic lives in the stages, one per input topic, each with its own agent, watermark and
pending acknowledgements: :class:`processors.tcp.processor.ConnectionProcessor`
(``enriched.tcp``), :class:`processors.udp.processor.UdpProcessor` (``enriched.udp``) and
:class:`processors.dns.processor.DnsProcessor` (``enriched.dns``); this module only wires
them to faust.
Choices that avoid faust-streaming's known pitfalls:

- No faust tables, no faust windows: the aggregation is in memory and the window close is
  ours (event-time watermark plus grace), not faust's wall-clock expiry. No changelog writes.
- One agent with ``concurrency=1`` (faust-streaming #606). Scale with partitions/processes.
- The ``kafka://`` driver (aiokafka), raw bytes in and out; JSON through flowscope.codec;
  a message holds one record or a batch (JSON array).

Restarts and crashes: **acknowledge after publish, idempotent outputs.** The agent
reads with acks disabled (``stream.noack()``) and acknowledges a message only once every
window its records went into has been published and the broker has confirmed delivery of
those metrics (faust commits only contiguous acknowledged offsets). A worker killed at any
point therefore re-reads, on restart, every record whose window was not published: nothing is
lost. Windows published but not yet committed may be published again from the re-read
records: every metric carries a deterministic ``metric_id`` (window, source partition,
grouping key) and the first record per id is complete (it was built before any record of its
window could be committed), so consumers keep the first per id (processors.core.dedupe) and count
each connection exactly once. When a rebalance takes a partition away, its open windows are
dropped here (never published, never acked): the new owner re-reads them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import faust

from flowscope.probes import Probe
from flowscope.records import DeadLetter  # noqa: F401  (the dead-letter contract)
from flowscope.topics import Topics
from processors.core.alerts import AlertRule
from processors.core.runtime import MissingCodec, check_codecs, tune_interpreter, use_gil_free_lz4
from processors.core.stage import Output, OutputKind, Source, WindowedStage
from processors.core.transport import ReadCommittedTransport, backlogged
from processors.cost.prices import PriceTable
from processors.dns.aggregate import NameGrouping, NameGroups
from processors.dns.processor import DnsProcessor
from processors.metrics import MetricsBoard
from processors.path.health import PathDropsInput, PathHealthProcessor
from processors.path.verdict import load_verdict
from processors.settings import ProcessorSettings
from processors.tcp.processor import ConnectionProcessor
from processors.udp.processor import UdpProcessor

log = logging.getLogger(__name__)

# A metric not delivered within this time: the worker exits without acknowledging, so a
# restart re-reads (and republishes) instead of losing the window.
DELIVERY_TIMEOUT_S = 30.0
# The longest a consumer keeps stale partition leaders (see build_app).
METADATA_MAX_AGE_MS = 10_000
EXIT_SHUTDOWN_TIMEOUT = 1
EXIT_DELIVERY_FAILED = 5
# A message read but not acknowledged: (partition, newest window start or None, event).
Pending = tuple[int, int | None, Any]
AnyStage = WindowedStage[Any, Any, Any, Any]


def build_processor(
    settings: ProcessorSettings, prices: PriceTable, rules: list[AlertRule]
) -> ConnectionProcessor:
    return ConnectionProcessor(
        window_ns=settings.window_ns,
        grace_ns=settings.grace_ns,
        idle_allowance_ns=settings.idle_allowance_ns,
        prices=prices,
        rules=rules,
        alpha=settings.sketch_alpha,
    )


def build_dns_processor(settings: ProcessorSettings, rules: list[AlertRule]) -> DnsProcessor:
    return DnsProcessor(
        window_ns=settings.window_ns,
        grace_ns=settings.dns_grace_ns,
        idle_allowance_ns=settings.idle_allowance_ns,
        rules=rules,
        alpha=settings.sketch_alpha,
        names=NameGroups(
            cast(NameGrouping, settings.dns_name_group),  # validated by the settings
            settings.dns_name_labels,
            settings.dns_cluster_domain,
        ),
    )


def build_udp_processor(settings: ProcessorSettings, prices: PriceTable) -> UdpProcessor:
    return UdpProcessor(
        window_ns=settings.window_ns,
        grace_ns=settings.grace_ns,
        idle_allowance_ns=settings.idle_allowance_ns,
        prices=prices,
    )


def build_path_processor(settings: ProcessorSettings) -> PathHealthProcessor:
    return PathHealthProcessor(
        window_ns=settings.window_ns,
        grace_ns=settings.path_grace_ns,
        idle_allowance_ns=settings.idle_allowance_ns,
        verdict=load_verdict(settings.alert_rules_path),
        alpha=settings.sketch_alpha,
    )


@dataclass
class Stages:
    """The worker's stages, one per input topic; ``name`` is its agent's and its log's."""

    tcp: ConnectionProcessor
    udp: UdpProcessor
    dns: DnsProcessor
    # A second reader of enriched.tcp (its own agent: faust acks a message once both did).
    path: PathHealthProcessor | None = None
    # /readyz once partitions are assigned; /livez while the event loop's timers run.
    probe: Probe = field(default_factory=lambda: Probe("processors"))

    def named(self) -> list[tuple[str, AnyStage]]:
        named: list[tuple[str, AnyStage]] = [
            ("tcp", self.tcp),
            ("udp", self.udp),
            ("dns", self.dns),
        ]
        return named + ([("path", self.path)] if self.path is not None else [])


# Agent names as the consumer group has known them.
AGENT_NAMES = {
    "tcp": "tcp_connections",
    "udp": "udp_flows",
    "dns": "dns_queries",
    "path": "tcp_path_health",
    "drops": "path_drops",
}


@dataclass
class _Bound:
    """A stage wired to its input topic, with the messages it read but did not acknowledge."""

    name: str
    stage: AnyStage | PathDropsInput
    source: Any
    pending: list[Pending] = field(default_factory=list)


def build_app(settings: ProcessorSettings, stages: Stages) -> faust.App:
    topics = Topics(settings.topic_prefix)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
        broker_credentials=settings.kafka_security.faust_credentials(),
        datadir=str(settings.data_dir),
        store="memory://",
        autodiscover=False,
        # No on_leader tasks, so no leader-election topic to create per app id.
        topic_disable_leader=True,
        web_enabled=settings.web_port != 0,
        web_port=settings.web_port or 6066,
        web_bind="127.0.0.1",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        worker_redirect_stdouts=False,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.session_timeout_s / 4),
        # Commits lag by up to window + grace + idle allowance by design (acks after publish):
        # not a livelock.
        broker_commit_livelock_soft_timeout=3600.0,
        # faust would wait for every unacknowledged message before a rebalance or a stop; ours
        # stay unacknowledged until their window is published, on purpose (re-read instead).
        stream_wait_empty=False,
        # Measured (bench/processors_bench.py): aiokafka's default 1 MiB per partition and
        # fetch starves the worker on batched records (~1 KB each); 16 MiB fetches doubled it.
        consumer_max_fetch_size=16 * 1024 * 1024,
        # Measured after the whole cluster restarted: aiokafka's offset lookup retried a
        # broker that no longer led the partition, with no metadata refresh, until this age
        # (5 min by default); nothing was fetched meanwhile.
        consumer_metadata_max_age_ms=METADATA_MAX_AGE_MS,
    )
    # Before the first topic (topics reach the transport): enriched.* is written in
    # transactions, so only committed records are read (processors/core/transport.py).
    app.transport = ReadCommittedTransport(app.conf.broker_consumer, app)
    inputs = {
        "tcp": topics.enriched_tcp,
        "udp": topics.enriched_udp,
        "dns": topics.enriched_dns,
        "path": topics.enriched_tcp,
        "drops": topics.raw_drops,
    }
    named: list[tuple[str, AnyStage | PathDropsInput]] = list(stages.named())
    if stages.path is not None:  # the kernel's drops join the path stage's windows
        named.append(("drops", PathDropsInput(stages.path)))
    bound = [
        _Bound(
            name,
            stage,
            app.topic(
                inputs[name],
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
            ),
        )
        for name, stage in named
    ]

    def out(name: str) -> Any:
        return app.topic(name, key_serializer="raw", value_serializer="raw")

    outputs: dict[OutputKind, Any] = {
        "pairs": out(topics.metrics_tcp_pairs),
        "latency": out(topics.metrics_tcp_latency),
        "cost_pairs": out(topics.metrics_cost_pairs),
        "cost_rollups": out(topics.metrics_cost_rollups),
        "alerts": out(topics.alerts),
        "dns": out(topics.metrics_dns),
        "path_health": out(topics.metrics_path_health),
    }
    deadletter_topic = out(topics.deadletter)
    # Per stage: each stage's counters say how many of its own dead letters were delivered.
    dead_futures: dict[int, tuple[AnyStage | PathDropsInput, list[Any]]] = {}

    async def consume(
        stream: faust.StreamT[bytes], stage: AnyStage | PathDropsInput, waiting: list[Pending]
    ) -> None:
        # noack: acknowledged by close_windows once the records' windows are published.
        async for event in stream.noack().events():  # type: ignore[attr-defined]
            message = event.message
            partition = message.partition
            newest, dead = stage.handle(
                event.value,
                Source(message.topic, partition, message.offset, message.key),
                time.time_ns(),
            )
            for letter in dead:
                fut = await deadletter_topic.send(key=message.key, value=letter)
                dead_futures.setdefault(id(stage), (stage, []))[1].append(fut)
            waiting.append((partition, newest, event))

    # The same contract for every stage: acknowledged once the window is published.
    for b in bound:

        async def aggregate(stream: faust.StreamT[bytes], b: _Bound = b) -> None:
            await consume(stream, b.stage, b.pending)

        app.agent(b.source, name=AGENT_NAMES[b.name], concurrency=1)(aggregate)

    async def publish(ready: list[Output], stage: AnyStage | PathDropsInput) -> None:
        if not ready:
            return
        futures = [await outputs[o.kind].send(key=o.key, value=o.value) for o in ready]
        stage.outputs.metrics_sent += len(futures)
        failed = await _delivered(futures)
        stage.outputs.metrics_delivered += len(futures) - failed
        stage.outputs.metrics_failed += failed
        if failed:
            _die(f"{failed} of {len(futures)} metrics were not delivered", stages)

    async def close_windows() -> None:
        now = time.time_ns()
        for b in bound:
            if isinstance(b.stage, WindowedStage):
                # Unread records are delayed, not late: their partitions hold the watermark.
                owned = b.stage.watermark.owned()
                b.stage.watermark.backlogged(backlogged(app, b.source.get_topic_name(), owned))
        for b in bound:
            await publish(b.stage.close_ready(now), b.stage)
        waiting_letters = list(dead_futures.values())
        dead_futures.clear()
        for stage, letters in waiting_letters:
            failed = await _delivered(letters)
            stage.outputs.dead_letters_delivered += len(letters) - failed
            if failed:
                _die(f"{failed} dead letters were not delivered", stages)
        # Acknowledge what is now safely published (or needed no window).
        for b in bound:
            _ack_published(b.pending, b.stage.aggregator.is_closed)

    async def log_counters() -> None:
        for name, stage in stages.named():
            log.info("%s counters %s", name, _format(stage.report()))

    first_assignment = True

    async def on_assigned(_app: Any, /, *args: Any, signal: Any, **_kwargs: Any) -> None:
        nonlocal first_assignment
        assigned: set[Any] = args[0] if args else set()
        mine = []
        for b in bound:
            topic = b.source.get_topic_name()
            parts = sorted(tp.partition for tp in assigned if tp.topic == topic)
            b.stage.assign(parts)
            mine.append(f"{topic} partitions {parts}")
        # "processor ready" is what scripts wait for: consuming from here on.
        label = "processor ready" if first_assignment else "partitions reassigned"
        first_assignment = False
        stages.probe.set_ready()
        log.info("%s: %s", label, ", ".join(mine))

    async def on_revoked(_app: Any, /, *args: Any, signal: Any, **_kwargs: Any) -> None:
        revoked: set[Any] = args[0] if args else set()
        for b in bound:
            topic = b.source.get_topic_name()
            gone = {tp.partition for tp in revoked if tp.topic == topic}
            if not gone:
                continue
            dropped = b.stage.drop_partitions(gone)
            # Never acknowledge them now: the partition's next owner reads them again.
            b.pending[:] = [item for item in b.pending if item[0] not in gone]
            log.info(
                "%s partitions %s revoked: dropped %d unpublished records",
                topic,
                sorted(gone),
                dropped,
            )

    app.on_partitions_assigned.connect(on_assigned)
    app.on_partitions_revoked.connect(on_revoked)
    # Applied as calls, not decorators: faust's timer decorator is untyped (mypy --strict).
    app.timer(settings.close_interval_s, name="close_windows")(close_windows)
    app.timer(settings.log_interval_s, name="log_counters")(log_counters)

    return app


def _ack_published(pending: list[Pending], is_closed: Callable[[int], bool]) -> None:
    """Acknowledge the messages whose newest window is published (or that needed none)."""
    keep = []
    for item in pending:
        _partition, newest, event = item
        if newest is None or is_closed(newest):
            event.ack()
        else:
            keep.append(item)
    pending[:] = keep


async def _delivered(futures: list[Any]) -> int:
    """How many of the send futures failed or did not complete in time."""
    if not futures:
        return 0
    done, not_done = await asyncio.wait(
        [asyncio.ensure_future(f) for f in futures], timeout=DELIVERY_TIMEOUT_S
    )
    return len(not_done) + sum(1 for d in done if d.exception() is not None)


def _die(reason: str, stages: Stages) -> None:
    log.error("%s: exiting without acknowledging; a restart re-reads them", reason)
    log.info("final counters %s", _format(stages.tcp.report()))
    for name, stage in stages.named()[1:]:
        log.info("%s counters at exit %s", name, _format(stage.report()))
    logging.shutdown()
    os._exit(EXIT_DELIVERY_FAILED)


class _Worker(faust.Worker):
    """faust's Worker with a deadline on shutdown.

    Measured: a SIGTERM that arrives while the consumer is joining its group makes the
    aiokafka consumer thread ignore the stop until mode's 60 s service timeout, longer than
    any supervisor waits. Past ``shutdown_timeout_s`` we log the final counters and exit hard
    (nothing is left to save: the open windows are in memory either way).
    """

    def __init__(
        self, *args: Any, shutdown_timeout_s: float, on_forced_exit: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._shutdown_timeout_s = shutdown_timeout_s
        self._on_forced_exit = on_forced_exit
        self._watchdog: threading.Timer | None = None

    # mode-streaming 0.7.1 (pinned) calls this for SIGTERM and SIGINT.
    def _schedule_shutdown(self, signal: Any) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Timer(self._shutdown_timeout_s, self._force_exit)
            self._watchdog.daemon = True
            self._watchdog.start()
        super()._schedule_shutdown(signal)

    def _force_exit(self) -> None:
        log.error(
            "shutdown did not finish within %.0fs (faust stuck stopping); exiting now",
            self._shutdown_timeout_s,
        )
        self._on_forced_exit()
        logging.shutdown()
        os._exit(EXIT_SHUTDOWN_TIMEOUT)


def run_worker(settings: ProcessorSettings, prices: PriceTable, rules: list[AlertRule]) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code. Logs go to stderr."""
    try:
        check_codecs()
    except MissingCodec as exc:
        log.error("%s", exc)
        return 4
    log.info("lz4 decompression: %s", use_gil_free_lz4())
    tune_interpreter()
    stages = Stages(
        tcp=build_processor(settings, prices, rules),
        udp=build_udp_processor(settings, prices),
        dns=build_dns_processor(settings, rules),
        path=build_path_processor(settings),
    )
    processor = stages.tcp
    app = build_app(settings, stages)
    board = MetricsBoard(dict(stages.named()))
    app.timer(settings.close_interval_s, name="metrics_snapshot")(_refresh(board, stages.probe))
    server = board.serve(settings.metrics_port, probes=[stages.probe])

    def final_report(code: int) -> None:
        report: dict[str, Any] = {
            **processor.report(),
            "unpublished_records": processor.aggregator.pending_records(),
        }
        log.info("tcp worker stopped (exit %d); final counters %s", code, _format(report))
        # Worded apart from "final counters": scripts read the TCP line by that phrase.
        for name, stage in stages.named()[1:]:
            log.info("%s counters at exit %s", name, _format(stage.report()))

    worker = _Worker(
        app,
        shutdown_timeout_s=settings.shutdown_timeout_s,
        on_forced_exit=lambda: final_report(EXIT_SHUTDOWN_TIMEOUT),
        loglevel=settings.log_level,
        # mode's default for logfile=None is *stdout*; the contract here is stderr.
        logfile=sys.stderr,
        quiet=True,  # no banner on stdout
        redirect_stdouts=False,
    )
    log.info(
        "starting tcp worker app_id=%s source=%s window_s=%s grace_s=%s idle_s=%s "
        "dns_source=%s dns_grace_s=%s dns_name_group=%s",
        settings.app_id,
        Topics(settings.topic_prefix).enriched_tcp,
        settings.window_s,
        settings.grace_s,
        settings.idle_allowance_s,
        Topics(settings.topic_prefix).enriched_dns,
        settings.dns_grace_s,
        settings.dns_name_group,
    )
    code = 0
    try:
        worker.execute_from_commandline()  # installs the signal handlers; exits via SystemExit
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if worker._watchdog is not None:
        worker._watchdog.cancel()
    if server is not None:
        server.close()
    final_report(code)
    return code


def _refresh(board: MetricsBoard, probe: Probe) -> Callable[[], Awaitable[None]]:
    async def refresh() -> None:
        board.refresh()
        probe.beat()

    return refresh


def _format(counters: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in counters.items())
