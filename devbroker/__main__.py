"""python -m devbroker fetch|start|stop|status: a real Kafka broker on 127.0.0.1."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from devbroker.broker import Broker, BrokerStatus
from devbroker.cluster import Cluster
from devbroker.errors import DevBrokerError
from devbroker.layout import DEFAULT_STATE_DIR

COMMANDS = ("fetch", "start", "stop", "status", "env")
# `status` exits with this when the broker is not running (the LSB "not running" code).
EXIT_NOT_RUNNING = 3


@dataclass(frozen=True)
class Settings:
    command: str
    port: int
    controller_port: int | None
    sasl_ssl_port: int | None
    brokers: int
    state_dir: Path
    fresh: bool
    heap_mb: int
    start_timeout_s: float
    java: str
    mvn: str


def _int_env(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"devbroker: {name}={raw!r} is not an integer") from None


def parse_settings(argv: Sequence[str], env: Mapping[str, str]) -> Settings:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--port",
        type=int,
        default=_int_env(env, "FLOWSCOPE_KAFKA_PORT", 9092),
        help="broker listener port on 127.0.0.1 (env FLOWSCOPE_KAFKA_PORT; default 9092)",
    )
    common.add_argument(
        "--controller-port",
        type=int,
        default=_int_env(env, "FLOWSCOPE_KAFKA_CONTROLLER_PORT", None),
        help="KRaft controller port (env FLOWSCOPE_KAFKA_CONTROLLER_PORT; default --port + 1)",
    )
    common.add_argument(
        "--sasl-ssl-port",
        type=int,
        default=_int_env(env, "FLOWSCOPE_KAFKA_SASL_SSL_PORT", None),
        help="also listen with SASL_SSL here (a generated CA, user 'flowscope' with PLAIN, "
        "SCRAM-SHA-256 and SCRAM-SHA-512; `env` prints the client settings) "
        "(env FLOWSCOPE_KAFKA_SASL_SSL_PORT; default: none)",
    )
    common.add_argument(
        "--brokers",
        type=int,
        default=_int_env(env, "FLOWSCOPE_KAFKA_BROKERS", 1),
        help="nodes (each broker+controller): 1, or 3 for replication factor 3 and "
        "min.insync.replicas 2; node i takes every port + i-1 "
        "(env FLOWSCOPE_KAFKA_BROKERS; default 1)",
    )
    common.add_argument(
        "--state-dir",
        type=Path,
        default=Path(env.get("FLOWSCOPE_KAFKA_STATE_DIR") or DEFAULT_STATE_DIR),
        help="data, logs and pid file (env FLOWSCOPE_KAFKA_STATE_DIR; "
        f"default {DEFAULT_STATE_DIR})",
    )
    common.add_argument(
        "--heap-mb",
        type=int,
        default=_int_env(env, "FLOWSCOPE_KAFKA_HEAP_MB", 512),
        help="broker JVM max heap in MiB (env FLOWSCOPE_KAFKA_HEAP_MB; default 512)",
    )
    common.add_argument(
        "--start-timeout",
        type=float,
        default=float(_int_env(env, "FLOWSCOPE_KAFKA_START_TIMEOUT_S", 120) or 120),
        help="seconds to wait for the broker to answer (env FLOWSCOPE_KAFKA_START_TIMEOUT_S; "
        "default 120)",
    )
    common.add_argument(
        "--java",
        default=env.get("FLOWSCOPE_JAVA") or "/usr/bin/java",
        help="Java 17+ executable (env FLOWSCOPE_JAVA; default /usr/bin/java)",
    )
    common.add_argument(
        "--mvn",
        default=env.get("FLOWSCOPE_MVN") or "/usr/bin/mvn",
        help="Maven executable (env FLOWSCOPE_MVN; default /usr/bin/mvn)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m devbroker",
        description="A real Apache Kafka broker (KRaft, broker+controller in one JVM, jars "
        "from Maven Central via broker/pom.xml) on 127.0.0.1.",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}"
    )
    sub.add_parser("fetch", parents=[common], help="download the Kafka jars (once)")
    start = sub.add_parser(
        "start", parents=[common], help="start the broker and wait until it answers"
    )
    start.add_argument(
        "--fresh", action="store_true", help="stop a running broker and wipe its data first"
    )
    sub.add_parser("stop", parents=[common], help="stop the broker (SIGTERM, then SIGKILL)")
    sub.add_parser(
        "status",
        parents=[common],
        help=f"print the broker's state; exit {EXIT_NOT_RUNNING} if stopped",
    )
    sub.add_parser(
        "env",
        parents=[common],
        help="print the FLOWSCOPE_* settings of a client of the SASL_SSL listener "
        "(the password as a file name, never its value)",
    )
    args = parser.parse_args(argv)
    for name in ("port", "controller_port", "sasl_ssl_port"):
        value = getattr(args, name)
        if value is not None and not 1 <= value <= 65535:
            parser.error(f"--{name.replace('_', '-')} {value} is not a port (valid: 1..65535)")
    if args.brokers < 1:
        parser.error(f"--brokers {args.brokers} must be 1 or more")
    if args.heap_mb < 128:
        parser.error(f"--heap-mb {args.heap_mb} is too small (valid: 128 or more)")
    if args.start_timeout <= 0:
        parser.error(f"--start-timeout {args.start_timeout} must be positive")
    return Settings(
        command=args.command,
        port=args.port,
        controller_port=args.controller_port,
        sasl_ssl_port=args.sasl_ssl_port,
        brokers=args.brokers,
        state_dir=args.state_dir,
        fresh=getattr(args, "fresh", False),
        heap_mb=args.heap_mb,
        start_timeout_s=args.start_timeout,
        java=args.java,
        mvn=args.mvn,
    )


def _build(settings: Settings) -> Broker | Cluster:
    if settings.brokers > 1:
        return Cluster(
            settings.state_dir,
            settings.port,
            settings.controller_port,
            brokers=settings.brokers,
            sasl_ssl_port=settings.sasl_ssl_port,
            heap_mb=settings.heap_mb,
            java=settings.java,
            mvn=settings.mvn,
            start_timeout_s=settings.start_timeout_s,
        )
    return Broker(
        settings.state_dir,
        settings.port,
        settings.controller_port,
        sasl_ssl_port=settings.sasl_ssl_port,
        heap_mb=settings.heap_mb,
        java=settings.java,
        mvn=settings.mvn,
        start_timeout_s=settings.start_timeout_s,
    )


def run(settings: Settings) -> int:
    try:
        broker = _build(settings)
    except ValueError as exc:
        print(f"devbroker: {exc}", file=sys.stderr)
        return 2
    try:
        if settings.command == "fetch":
            if not broker.fetch():
                print("Kafka jars already complete")
        elif settings.command == "start":
            broker.start(fresh=settings.fresh)
        elif settings.command == "stop":
            if not broker.stop():
                print(f"not running (state dir {settings.state_dir})")
        elif settings.command == "env":
            print(f"FLOWSCOPE_BOOTSTRAP_SERVERS={broker.sasl_bootstrap}")
            for key, value in broker.client_security().env().items():
                print(f"{key}={value}")
        else:
            nodes = broker.status() if isinstance(broker, Cluster) else [broker.status()]
            return max(_print_status(status) for status in nodes)
    except DevBrokerError as exc:
        print(f"devbroker: {exc}", file=sys.stderr)
        return 1
    return 0


def _print_status(status: BrokerStatus) -> int:
    if not status.running:
        print(f"stopped (Kafka {status.kafka_version}, state dir {status.state_dir})")
        return EXIT_NOT_RUNNING
    rss = f"{status.rss_bytes / 2**20:.0f} MiB" if status.rss_bytes else "unknown"
    sasl = f", SASL_SSL at {status.sasl_bootstrap}" if status.sasl_bootstrap else ""
    print(
        f"running: Kafka {status.kafka_version} at {status.bootstrap}{sasl}, pid {status.pid}, "
        f"RSS {rss}, state dir {status.state_dir}"
    )
    return 0


def main() -> int:
    return run(parse_settings(sys.argv[1:], os.environ))


if __name__ == "__main__":
    sys.exit(main())
