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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from flowscope import kafka_security
from flowscope.kafka import KafkaUnavailable, TopicSpec, ensure_topics, wait_for_broker
from flowscope.kafka_security import KafkaSecurityError
from flowscope.resources import shipped
from flowscope.topics import Topics
from processors.alerts import AlertRuleError, load_rules
from processors.prices import PriceTableError, load_price_table
from processors.settings import LOG_LEVELS, ProcessorSettings, SettingsError
from processors.verdict import load_verdict

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("processors")


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _typed(convert: Callable[[str], T], env_name: str) -> Callable[[str], T]:
    """An argparse type whose error names the environment variable too."""

    def parse(text: str) -> T:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a valid {convert.__name__} (from the option or {env_name})"
            ) from exc

    parse.__name__ = convert.__name__
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m processors", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser(
        "worker",
        help="consume enriched TCP and DNS records, publish metrics and alerts per window",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )

    def option(
        flag: str, env: str, default: str, convert: Callable[[str], object], doc: str
    ) -> None:
        w.add_argument(
            flag,
            default=_env(env, default),
            type=_typed(convert, env),
            help=f"{doc} [env {env}]",
        )

    option(
        "--bootstrap-servers",
        "FLOWSCOPE_BOOTSTRAP_SERVERS",
        "127.0.0.1:9092",
        str,
        "Kafka bootstrap servers, host:port[,host:port]",
    )
    option(
        "--topic-prefix", "FLOWSCOPE_TOPIC_PREFIX", "flowscope", str, "prefix of every topic name"
    )
    option(
        "--window-seconds",
        "FLOWSCOPE_PROCESSORS_WINDOW_S",
        "10",
        float,
        "tumbling window length in seconds (event time = connection end)",
    )
    option(
        "--grace-seconds",
        "FLOWSCOPE_PROCESSORS_GRACE_S",
        "5",
        float,
        "a window is published when the watermark passes its end + grace",
    )
    option(
        "--idle-allowance-seconds",
        "FLOWSCOPE_PROCESSORS_IDLE_ALLOWANCE_S",
        "10",
        float,
        "the watermark is max(newest event time, now - this): how long a quiet or lagging "
        "stream holds windows open",
    )
    option(
        "--app-id",
        "FLOWSCOPE_PROCESSORS_APP_ID",
        "flowscope-tcp-pairs",
        str,
        "faust app id = Kafka consumer group",
    )
    option(
        "--web-port",
        "FLOWSCOPE_PROCESSORS_WEB_PORT",
        "0",
        int,
        "faust web server port on 127.0.0.1; 0 disables it",
    )
    option(
        "--state-dir",
        "FLOWSCOPE_STATE_DIR",
        ".state",
        Path,
        "state directory; faust's data dir is <state-dir>/processors/<app-id>",
    )
    option(
        "--close-interval-seconds",
        "FLOWSCOPE_PROCESSORS_CLOSE_INTERVAL_S",
        "1",
        float,
        "how often ready windows are closed and published",
    )
    option(
        "--log-interval-seconds",
        "FLOWSCOPE_PROCESSORS_LOG_INTERVAL_S",
        "10",
        float,
        "how often the counters are logged",
    )
    option(
        "--sketch-alpha",
        "FLOWSCOPE_PROCESSORS_SKETCH_ALPHA",
        "0.01",
        float,
        "relative accuracy of the latency sketch",
    )
    option(
        "--shutdown-timeout-seconds",
        "FLOWSCOPE_PROCESSORS_SHUTDOWN_TIMEOUT_S",
        "15",
        float,
        "after SIGTERM, exit hard (code 1) if faust has not stopped within this time",
    )
    option(
        "--prices",
        "FLOWSCOPE_PROCESSORS_PRICES",
        str(shipped("prices.yaml")),
        Path,
        "data-transfer price table (USD per GB, per cloud and path class)",
    )
    option(
        "--cloud",
        "FLOWSCOPE_PROCESSORS_CLOUD",
        "",
        str,
        "price table to use: aws, gcp, azure or custom; empty: the file's `cloud`",
    )
    option(
        "--alert-rules",
        "FLOWSCOPE_PROCESSORS_ALERT_RULES",
        str(shipped("alerts.yaml")),
        Path,
        "alert rules YAML",
    )
    option(
        "--session-timeout-seconds",
        "FLOWSCOPE_PROCESSORS_SESSION_TIMEOUT_S",
        "10",
        float,
        "consumer group session timeout: how soon a dead worker's partitions move",
    )
    option(
        "--dns-grace-seconds",
        "FLOWSCOPE_PROCESSORS_DNS_GRACE_S",
        "10",
        float,
        "DNS windows (event time = query) are published at their end + this; keep it above "
        "the collector's DNS timeout",
    )
    option(
        "--dns-name-group",
        "FLOWSCOPE_PROCESSORS_DNS_NAME_GROUP",
        "suffix",
        str,
        "DNS query name grouping: suffix (last labels of the asked name), asked, name, none",
    )
    option(
        "--dns-name-labels",
        "FLOWSCOPE_PROCESSORS_DNS_NAME_LABELS",
        "2",
        int,
        "labels kept by --dns-name-group suffix",
    )
    option(
        "--dns-cluster-domain",
        "FLOWSCOPE_PROCESSORS_DNS_CLUSTER_DOMAIN",
        "cluster.local",
        str,
        "cluster domain: <svc>.<ns>.svc.<domain> names are grouped per service",
    )
    w.add_argument(
        "--log-level",
        default=_env("FLOWSCOPE_LOG_LEVEL", "INFO").upper(),
        type=str.upper,
        choices=LOG_LEVELS,
        help="log level [env FLOWSCOPE_LOG_LEVEL]",
    )
    w.add_argument(
        "--broker-wait-seconds",
        default=_env("FLOWSCOPE_BROKER_WAIT_S", "30"),
        type=_typed(float, "FLOWSCOPE_BROKER_WAIT_S"),
        help="how long to wait for the broker at start [env FLOWSCOPE_BROKER_WAIT_S]",
    )
    kafka_security.add_arguments(w, os.environ)
    return p


def _stop_before_start(signum: int, _frame: object) -> None:
    log.info("signal %d received before the worker started; exiting", signum)
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = ProcessorSettings(
            bootstrap_servers=args.bootstrap_servers,
            topic_prefix=args.topic_prefix,
            window_s=args.window_seconds,
            grace_s=args.grace_seconds,
            idle_allowance_s=args.idle_allowance_seconds,
            app_id=args.app_id,
            web_port=args.web_port,
            state_dir=args.state_dir,
            close_interval_s=args.close_interval_seconds,
            log_interval_s=args.log_interval_seconds,
            sketch_alpha=args.sketch_alpha,
            shutdown_timeout_s=args.shutdown_timeout_seconds,
            log_level=args.log_level,
            prices_path=args.prices,
            cloud=args.cloud or None,
            alert_rules_path=args.alert_rules,
            session_timeout_s=args.session_timeout_seconds,
            dns_grace_s=args.dns_grace_seconds,
            dns_name_group=args.dns_name_group,
            dns_name_labels=args.dns_name_labels,
            dns_cluster_domain=args.dns_cluster_domain,
            kafka_security=kafka_security.from_args(args, os.environ),
        )
        prices = load_price_table(settings.prices_path, settings.cloud)
        rules = load_rules(settings.alert_rules_path)
        load_verdict(settings.alert_rules_path)  # a bad network_verdict fails here, named
    except (SettingsError, PriceTableError, AlertRuleError, KafkaSecurityError) as exc:
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
        wait_for_broker(settings.bootstrap_servers, timeout_s=args.broker_wait_seconds)
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

    code = run_worker(settings, prices, rules)
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
