"""``python -m processors worker``: run the metrics worker: TCP connections (pair totals,
latency, cross-zone cost) and DNS queries (failure rates, latency), with their alerts.

Every option has a FLOWSCOPE_* environment variable as its default; the environment is read
here and nowhere else.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence

from flowscope import kafka_security
from flowscope import settings as declared
from flowscope.kafka import KafkaUnavailable, TopicSpec, ensure_topics, wait_for_broker
from flowscope.kafka_security import KafkaSecurityError
from flowscope.topics import Topics
from processors import ProcessorsError
from processors.core.alerts import load_rules
from processors.cost.prices import load_price_table
from processors.path.verdict import load_verdict
from processors.settings import ProcessorSettings

log = logging.getLogger("processors")


def parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    p = argparse.ArgumentParser(prog="python -m processors", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser(
        "worker",
        help="consume enriched TCP and DNS records, publish metrics and alerts per window",
    )
    declared.add_arguments(w, ProcessorSettings, env)
    kafka_security.add_arguments(w, env)
    return p


def _stop_before_start(signum: int, _frame: object) -> None:
    log.info("signal %d received before the worker started; exiting", signum)
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        security = kafka_security.from_args(args)
        settings: ProcessorSettings = declared.from_args(
            ProcessorSettings, args, kafka_security=security
        )
        prices = load_price_table(settings.prices_path, settings.cloud)
        rules = load_rules(settings.alert_rules_path)
        load_verdict(settings.alert_rules_path)  # a bad network_verdict fails here, named
    except (ProcessorsError, KafkaSecurityError) as exc:
        print(f"python -m processors: invalid setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        stream=sys.stderr,
        level=settings.log_level,
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
    )
    # Until faust installs its own handlers: a SIGTERM while waiting for the broker is a
    # clean stop, not a kill.
    signal.signal(signal.SIGTERM, _stop_before_start)
    topics = Topics(settings.topic_prefix)
    kafka_security.register(settings.bootstrap_servers, settings.kafka_security)
    try:
        wait_for_broker(settings.bootstrap_servers, timeout_s=settings.broker_wait_s)
        # Created here (if missing) so that the worker never waits on a topic that another
        # stage has not created yet; partitions of existing topics are left alone.
        ensure_topics(
            settings.bootstrap_servers,
            [
                TopicSpec(topics.enriched_tcp),
                TopicSpec(topics.enriched_udp),
                TopicSpec(topics.enriched_dns),
                TopicSpec(topics.metrics_dns),
                TopicSpec(topics.metrics_tcp_pairs),
                TopicSpec(topics.metrics_tcp_latency),
                TopicSpec(topics.metrics_cost_pairs),
                TopicSpec(topics.metrics_cost_rollups),
                TopicSpec(topics.metrics_path_health),
                TopicSpec(topics.alerts),
                TopicSpec(topics.deadletter),
            ],
        )
    except KafkaUnavailable as exc:
        log.error("%s", exc)
        return 3
    # Imported late: faust is slow to import and not needed for --help or bad settings.
    from processors.app import run_worker

    try:
        code = run_worker(settings, prices, rules)
    except ProcessorsError as exc:
        print(f"python -m processors: {exc}", file=sys.stderr)
        return 1
    _exit_despite_lingering_threads(code)
    return code


def _exit_despite_lingering_threads(code: int) -> None:
    """Measured: when faust's consumer thread times out while stopping, it stays alive as a
    non-daemon thread and the interpreter never exits after the worker has stopped."""
    lingering = [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    for t in lingering:
        t.join(timeout=2.0)
    stuck = [t.name for t in lingering if t.is_alive()]
    if stuck:
        log.warning("threads left running after the worker stopped %s; exiting anyway", stuck)
        logging.shutdown()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
