"""``python -m collector``: the only place that reads the environment. ``--help`` lists
every setting with its FLOWSCOPE_* variable."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from collector.app import Collector
from collector.attribution import CgroupResolver
from collector.errors import CollectorError
from collector.settings import Settings, parse_settings
from collector.source import TcpConnSource
from flowscope.kafka import KafkaUnavailable, RecordProducer

log = logging.getLogger("collector")


def run(settings: Settings) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    resolver = CgroupResolver(settings.cgroup_root)
    resolver.refresh()
    producer = RecordProducer(settings.bootstrap_servers, settings.kafka_options)
    with TcpConnSource(
        settings.bpf_object,
        ringbuf_bytes=settings.ringbuf_bytes,
        tracefs=settings.tracefs,
        mount_tracefs=settings.mount_tracefs,
    ) as source:
        collector = Collector(
            source,
            producer,
            resolver,
            node_name=settings.node_name,
            topic=settings.topics.raw_tcp,
            max_batch=settings.max_batch,
            poll_interval_s=settings.poll_interval_s,
            stats_interval_s=settings.stats_interval_s,
        )
        # Others (the demo, tests) wait for this line: the program is attached by now.
        log.info(
            "collector ready: producing to %s at %s as node %s (cgroup root %s)",
            settings.topics.raw_tcp,
            settings.bootstrap_servers,
            settings.node_name,
            settings.cgroup_root,
        )
        try:
            collector.run(stop)
        finally:
            collector.shutdown(settings.flush_timeout_s)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(argv, dict(os.environ))
    except CollectorError as exc:
        print(f"collector: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        return run(settings)
    except (CollectorError, KafkaUnavailable) as exc:
        print(f"collector: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
