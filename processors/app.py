"""The faust-streaming worker for TCP pair metrics: Kafka in, Kafka out, nothing else.

All logic lives in :class:`processors.tcp_pairs.TcpPairsProcessor`; this module only wires it
to faust. Choices that avoid faust-streaming's known pitfalls (issue 6):

- No faust tables, no faust windows: the aggregation is in memory and the window close is
  ours (event-time watermark plus grace, in processors.pairs), not faust's wall-clock expiry.
  So no changelog writes per record and no windowed-table-in-take() trap.
- One agent with ``concurrency=1`` (faust-streaming #606: concurrency > 1 can commit offsets
  past unfinished messages). Scale with partitions and worker processes.
- The ``kafka://`` driver (aiokafka), raw bytes in and out; JSON through flowscope.codec.

Restarts (exactly-once is issue 6, not done here): faust acks each message once the agent has
handled it and commits acked offsets every few seconds, but the open windows live only in this
process's memory. A worker that stops therefore loses the connections of its open windows
(logged at shutdown as ``unpublished_connections``), and a crash after a window was published
but before its offsets were committed re-reads those records on restart and publishes a second
record for that pair and window. Fixing both means acking a record only after its window is
published (or making outputs idempotent), which issue 6 owns.

Several workers in one consumer group split the partitions; unless the enriched topic is
keyed by workload pair, two workers can each publish a partial record for the same pair and
window (consumers can merge them: counts add, sketches merge).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
import threading
import time
from typing import Any

import faust

from flowscope.topics import Topics
from processors.settings import ProcessorSettings
from processors.tcp_pairs import Source, TcpPairsProcessor

log = logging.getLogger(__name__)

# A metric that is not delivered within this time is counted as failed; the timer goes on.
DELIVERY_TIMEOUT_S = 30.0
EXIT_SHUTDOWN_TIMEOUT = 1


def build_processor(settings: ProcessorSettings) -> TcpPairsProcessor:
    return TcpPairsProcessor(
        window_ns=settings.window_ns,
        grace_ns=settings.grace_ns,
        idle_allowance_ns=settings.idle_allowance_ns,
        alpha=settings.sketch_alpha,
    )


def build_app(settings: ProcessorSettings, processor: TcpPairsProcessor) -> faust.App:
    topics = Topics(settings.topic_prefix)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
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
    )
    source = app.topic(
        topics.enriched_tcp,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    metrics_topic = app.topic(
        topics.metrics_tcp_pairs, key_serializer="raw", value_serializer="raw"
    )
    deadletter_topic = app.topic(topics.deadletter, key_serializer="raw", value_serializer="raw")

    @app.agent(source, name="tcp_pairs", concurrency=1)
    async def aggregate(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            dead = processor.handle(
                event.value,
                Source(message.topic, message.partition, message.offset, message.key),
                time.time_ns(),
            )
            if dead is not None:
                # Sent as an attachment of this event: published when the event is acked.
                # faust calls back on delivery only: dead_lettered - dead_letters_delivered
                # is what is still in flight or failed.
                await deadletter_topic.send(key=message.key, value=dead, callback=on_dead_sent)

    def on_dead_sent(_fut: Any) -> None:
        processor.outputs.dead_letters_delivered += 1

    async def close_windows() -> None:
        ready = processor.close_ready(time.time_ns())
        if not ready:
            return
        pending = [await metrics_topic.send(key=key, value=value) for key, value in ready]
        processor.outputs.metrics_sent += len(pending)
        done, not_done = await asyncio.wait(
            [asyncio.ensure_future(p) for p in pending], timeout=DELIVERY_TIMEOUT_S
        )
        failed = len(not_done) + sum(1 for d in done if d.exception() is not None)
        processor.outputs.metrics_delivered += len(pending) - failed
        processor.outputs.metrics_failed += failed
        if failed:
            log.error("%d of %d metrics were not delivered", failed, len(pending))

    async def log_counters() -> None:
        log.info("tcp_pairs counters %s", _format(processor.report()))

    first_assignment = True

    async def on_assigned(_app: Any, /, *args: Any, signal: Any, **_kwargs: Any) -> None:
        nonlocal first_assignment
        assigned: set[Any] = args[0] if args else set()
        mine = sorted(tp.partition for tp in assigned if tp.topic == source.get_topic_name())
        # "processor ready" is what scripts wait for: consuming from here on.
        label = "processor ready" if first_assignment else "partitions reassigned"
        first_assignment = False
        log.info("%s: %s partitions %s", label, source.get_topic_name(), mine)

    app.on_partitions_assigned.connect(on_assigned)
    # Applied as calls, not decorators: faust's timer decorator is untyped (mypy --strict).
    app.timer(settings.close_interval_s, name="close_windows")(close_windows)
    app.timer(settings.log_interval_s, name="log_counters")(log_counters)

    return app


class MissingCodec(RuntimeError):
    """aiokafka cannot decompress what flowscope's producers write."""


def check_codecs() -> None:
    """Fail at start, not at the first fetch: without cramjam, aiokafka cannot read lz4/zstd
    batches (flowscope's producers write lz4) and the fetcher crashes the whole worker."""
    # importlib: aiokafka ships no type information (and is not in mypy's overrides).
    codec = importlib.import_module("aiokafka.codec")
    if not (codec.has_lz4() and codec.has_zstd()):
        raise MissingCodec(
            "aiokafka cannot decompress lz4/zstd: install cramjam (pip install 'aiokafka[lz4]')"
        )


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


def run_worker(settings: ProcessorSettings) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code. Logs go to stderr."""
    try:
        check_codecs()
    except MissingCodec as exc:
        log.error("%s", exc)
        return 4
    processor = build_processor(settings)
    app = build_app(settings, processor)

    def final_report(code: int) -> None:
        report: dict[str, Any] = {
            **processor.report(),
            "unpublished_connections": processor.aggregator.pending_connections(),
        }
        log.info("tcp_pairs worker stopped (exit %d); final counters %s", code, _format(report))

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
        "starting tcp_pairs worker app_id=%s source=%s window_s=%s grace_s=%s idle_s=%s",
        settings.app_id,
        Topics(settings.topic_prefix).enriched_tcp,
        settings.window_s,
        settings.grace_s,
        settings.idle_allowance_s,
    )
    code = 0
    try:
        worker.execute_from_commandline()  # installs the signal handlers; exits via SystemExit
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if worker._watchdog is not None:
        worker._watchdog.cancel()
    final_report(code)
    return code


def _format(counters: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in counters.items())
