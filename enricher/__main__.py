"""``python -m enricher publish|join``: the only place that reads the environment.

publish          read a file of Kubernetes objects, write slim metadata to the compacted
                 topic, exit
publish --watch  keep the topic in step with a live cluster (kubeconfig or in-cluster),
                 one active replica per Lease
join             join raw TCP records with the metadata topic and produce enriched records
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

from enricher import EnricherError
from enricher.join.joiner import Joiner
from enricher.metrics import serve
from enricher.publish.kubeobjects import parse_text
from enricher.publish.publisher import MetadataPublisher
from enricher.settings import ENV, Settings
from flowscope import kafka_security
from flowscope import settings as declared
from flowscope.kafka import KafkaUnavailable, ProducerFenced, wait_for_broker

__all__ = ["ENV", "EXIT_FENCED", "build_parser", "main", "settings_from_args"]

EXIT_FENCED = 3  # another instance took this one's transactional.id

# A producer that failed on its own (not fenced by a newer instance: e.g. a commit refused
# after its transaction coordinator moved) is replaced in-process: the join starts again from
# the committed offsets, as a restarted process would. Bounded, so a failure that comes back
# at once still ends the process for its supervisor to see.
MAX_JOIN_RESTARTS = 5
JOIN_RESTART_BACKOFF_S = 1.0


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    if not env.get(ENV["kubeconfig"]) and env.get("KUBECONFIG"):
        # kubectl's own variable, when flowscope's is not set.
        env = {**env, ENV["kubeconfig"]: env["KUBECONFIG"]}
    parser = argparse.ArgumentParser(
        prog="python -m enricher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{publish,join}")
    for command, text in (
        ("publish", "publish a file of k8s objects once"),
        ("join", "join raw records with metadata"),
    ):
        p = sub.add_parser(command, help=text)
        declared.add_arguments(p, Settings, env, command=command)
        kafka_security.add_arguments(p, env)
    return parser


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """Raises KafkaSecurityError."""
    built: Settings = declared.from_args(
        Settings, args, kafka_security=kafka_security.from_args(args)
    )
    return built


def kube_api_client(settings: Settings) -> Any:
    """An ApiClient from the kubeconfig, else from the pod's service account."""
    from kubernetes import client, config

    cfg = client.Configuration()
    if settings.kubeconfig is not None:
        if not settings.kubeconfig.is_file():
            raise EnricherError(f"kubeconfig not found: {settings.kubeconfig}")
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(settings.kubeconfig),
            context=settings.kube_context,
            client_configuration=cfg,
        )
    else:
        try:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=cfg
            )
        except config.ConfigException as exc:
            raise EnricherError(
                f"no kubeconfig given (--kubeconfig, {ENV['kubeconfig']} or KUBECONFIG) and "
                f"not running in a cluster: {exc}"
            ) from exc
    return client.ApiClient(cfg)


def publish_watch(settings: Settings) -> int:
    from enricher.publish.lease import LeaseConfig
    from enricher.publish.live import WatchOptions, WatchPublisher

    identity = settings.identity or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    try:
        lease = (
            LeaseConfig(
                namespace=settings.lease_namespace,
                name=settings.lease_name,
                identity=identity,
                lease_duration_s=settings.lease_duration_s,
                renew_deadline_s=settings.renew_deadline_s,
                retry_period_s=settings.retry_period_s,
            )
            if settings.leader_election
            else None
        )
    except ValueError as exc:
        print(f"enricher: {exc}", file=sys.stderr)
        return 2
    api = kube_api_client(settings)
    wait_for_broker(settings.bootstrap_servers)
    stop = _stop_on_signals()
    publisher = WatchPublisher(
        api,
        settings.bootstrap_servers,
        settings.topics,
        WatchOptions(
            lease=lease,
            watch_timeout_s=settings.watch_timeout_s,
            pod_fields=settings.pod_fields,
            stats_interval_s=settings.stats_interval_s,
            shutdown_timeout_s=settings.shutdown_timeout_s,
            heartbeat_interval_s=(
                5.0 if settings.heartbeat_interval_s is None else settings.heartbeat_interval_s
            ),
            identity=identity,
        ),
    )
    server = serve(settings.metrics_port, publisher.metrics, probes=[publisher.probe])
    try:
        publisher.run(stop)
    finally:
        if server is not None:
            server.close()
    return 0


def _stop_on_signals(*also: threading.Event) -> threading.Event:
    """An event SIGTERM and SIGINT set (with ``also``)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("enricher").info("signal %d: stopping", signum)
        stop.set()
        for event in also:
            event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def publish(settings: Settings) -> int:
    if settings.watch:
        return publish_watch(settings)
    path = settings.metadata_file
    if path is None:
        print(f"publish needs --file or {ENV['metadata_file']}", file=sys.stderr)
        return 2
    if not path.is_file():
        print(f"metadata file not found: {path}", file=sys.stderr)
        return 2
    parsed = parse_text(path.read_text(), settings.pod_fields)
    for problem in parsed.skipped:
        print(f"skipped {problem}", file=sys.stderr)
    wait_for_broker(settings.bootstrap_servers)
    report = MetadataPublisher(settings.bootstrap_servers, settings.topics).publish(
        parsed,
        prune=settings.prune,
        heartbeat_interval_s=settings.heartbeat_interval_s or None,
        source=settings.identity or f"file-{socket.gethostname()}",
    )
    seen = ", ".join(f"{k}={n}" for k, n in sorted(parsed.seen.items()))
    print(f"read {path}: {seen or 'no objects'}")
    print(f"{report.summary()} to {settings.topics.metadata}")
    return 0


def join(settings: Settings) -> int:
    restarts = 0
    while True:
        # Per start: a joiner that fails ends this start without the process's stop.
        halt = threading.Event()
        stop = _stop_on_signals(halt)
        try:
            return _join_once(settings, halt, restarts)
        except ProducerFenced as exc:
            if exc.by_newer_instance or stop.is_set() or restarts >= MAX_JOIN_RESTARTS:
                raise
            restarts += 1
            logging.getLogger("enricher").warning(
                "%s: starting the join again from the committed offsets (restart %d of %d)",
                exc,
                restarts,
                MAX_JOIN_RESTARTS,
            )
            if stop.wait(JOIN_RESTART_BACKOFF_S * restarts):
                return 0


def _join_once(settings: Settings, stop: threading.Event, restarts: int) -> int:
    # Before the two joiners start: a refusal ends the start with one line, not two.
    wait_for_broker(settings.bootstrap_servers)

    def restarted() -> dict[str, int]:
        return {"enricher_join_restarts_total": restarts}

    if not settings.dns:
        joiner = Joiner(settings)
        server = serve(settings.metrics_port, joiner.metrics, restarted, probes=[joiner.probe])
        try:
            joiner.run(stop)
        finally:
            if server is not None:
                server.close()
        return 0
    from enricher.join.dnsjoin import DnsJoiner
    from enricher.join.dnsnames import DnsNames
    from enricher.join.view import MetadataView

    failed: list[BaseException] = []
    # The DNS joiner feeds it, the TCP joiner names internet servers with it.
    names = DnsNames()
    view = MetadataView(settings)  # one metadata index for both joiners
    joiner = Joiner(settings, names=names, view=view)
    dns_joiner = DnsJoiner(settings, names=names, view=view)

    def run_dns() -> None:
        try:
            dns_joiner.run(stop)
        except BaseException as exc:  # the whole enricher stops: a silent half is worse
            logging.getLogger("enricher.dns").exception("DNS joiner failed")
            failed.append(exc)
            stop.set()

    server = serve(
        settings.metrics_port,
        joiner.metrics,
        dns_joiner.counters.as_metrics,
        restarted,
        probes=[joiner.probe, dns_joiner.probe],
    )
    dns_thread = threading.Thread(target=run_dns, name="dns-join")
    dns_thread.start()
    try:
        joiner.run(stop)
    finally:
        stop.set()
        dns_thread.join(timeout=30)
        if server is not None:
            server.close()
    fenced = [exc for exc in failed if isinstance(exc, ProducerFenced)]
    if fenced:
        raise fenced[0]
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    env = dict(os.environ)
    args = build_parser(env).parse_args(argv)
    try:
        settings = settings_from_args(args, env)
    except (kafka_security.KafkaSecurityError, EnricherError) as exc:
        print(f"enricher: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    kafka_security.register(settings.bootstrap_servers, settings.kafka_security)
    try:
        return publish(settings) if args.command == "publish" else join(settings)
    except ProducerFenced as exc:
        # A newer instance with this transactional.id took over (or a fatal producer error):
        # this one must not produce again. Nonzero, so a supervisor sees it.
        print(f"enricher: fenced, stopping: {exc}", file=sys.stderr)
        return EXIT_FENCED
    except (EnricherError, KafkaUnavailable) as exc:
        print(f"enricher: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
