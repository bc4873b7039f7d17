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
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from enricher import EnricherError
from enricher.argtypes import (
    MAX_BATCH_RECORDS,
    annotation_keys,
    batch_records,
    cidrs,
    flag,
    non_negative,
    port,
    positive,
)
from enricher.joiner import Joiner
from enricher.kubeobjects import parse_text
from enricher.labels import parse_globs
from enricher.metrics import serve
from enricher.publisher import MetadataPublisher
from enricher.settings import Settings
from flowscope import kafka_security
from flowscope.kafka import KafkaUnavailable, ProducerFenced, wait_for_broker

ENV = {
    "bootstrap_servers": "FLOWSCOPE_BOOTSTRAP_SERVERS",
    "topic_prefix": "FLOWSCOPE_TOPIC_PREFIX",
    "consumer_group": "FLOWSCOPE_ENRICHER_GROUP",
    "metadata_file": "FLOWSCOPE_METADATA_FILE",
    "stats_interval_s": "FLOWSCOPE_ENRICHER_STATS_INTERVAL_S",
    "metrics_port": "FLOWSCOPE_ENRICHER_METRICS_PORT",
    "batch_size": "FLOWSCOPE_ENRICHER_BATCH_SIZE",
    "output_batch_records": "FLOWSCOPE_ENRICHER_BATCH_RECORDS",
    "deleted_pod_grace_s": "FLOWSCOPE_ENRICHER_DELETED_POD_GRACE_S",
    "holdback_s": "FLOWSCOPE_ENRICHER_HOLDBACK_S",
    "holdback_max_records": "FLOWSCOPE_ENRICHER_HOLDBACK_MAX_RECORDS",
    "cluster_cidrs": "FLOWSCOPE_CLUSTER_CIDRS",
    "other_cluster_cidrs": "FLOWSCOPE_OTHER_CLUSTER_CIDRS",
    "watch": "FLOWSCOPE_PUBLISH_WATCH",
    "kubeconfig": "FLOWSCOPE_KUBECONFIG",
    "kube_context": "FLOWSCOPE_KUBE_CONTEXT",
    "leader_election": "FLOWSCOPE_PUBLISH_LEADER_ELECTION",
    "lease_namespace": "FLOWSCOPE_LEASE_NAMESPACE",
    "lease_name": "FLOWSCOPE_LEASE_NAME",
    "identity": "FLOWSCOPE_PUBLISHER_IDENTITY",
    "lease_duration_s": "FLOWSCOPE_LEASE_DURATION_S",
    "renew_deadline_s": "FLOWSCOPE_LEASE_RENEW_DEADLINE_S",
    "retry_period_s": "FLOWSCOPE_LEASE_RETRY_PERIOD_S",
    "watch_timeout_s": "FLOWSCOPE_WATCH_TIMEOUT_S",
    "publish_labels": "FLOWSCOPE_PUBLISH_LABELS",
    "publish_annotations": "FLOWSCOPE_PUBLISH_ANNOTATIONS",
    "dns": "FLOWSCOPE_ENRICHER_DNS",
    "exactly_once": "FLOWSCOPE_ENRICHER_EXACTLY_ONCE",
    "instance": "FLOWSCOPE_ENRICHER_INSTANCE",
    "commit_interval_s": "FLOWSCOPE_ENRICHER_COMMIT_INTERVAL_S",
    "commit_max_records": "FLOWSCOPE_ENRICHER_COMMIT_MAX_RECORDS",
    "record_pod_labels": "FLOWSCOPE_ENRICHER_POD_LABELS",
    "record_node_labels": "FLOWSCOPE_ENRICHER_NODE_LABELS",
}


def build_parser(env: dict[str, str]) -> argparse.ArgumentParser:
    d = Settings()

    def default(name: str, fallback: object) -> object:
        return env.get(ENV[name], fallback)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--bootstrap-servers",
        default=default("bootstrap_servers", d.bootstrap_servers),
        help=f"Kafka bootstrap servers (env {ENV['bootstrap_servers']}; default %(default)s)",
    )
    common.add_argument(
        "--topic-prefix",
        default=default("topic_prefix", d.topic_prefix),
        help=f"prefix of every topic name (env {ENV['topic_prefix']}; default %(default)s)",
    )
    common.add_argument(
        "--stats-interval-s",
        type=positive(float, "--stats-interval-s"),
        default=default("stats_interval_s", d.stats_interval_s),
        help=f"seconds between counter log lines (env {ENV['stats_interval_s']}; "
        f"default %(default)s)",
    )
    common.add_argument(
        "--metrics-port",
        type=port,
        default=default("metrics_port", d.metrics_port),
        help=f"Prometheus /metrics port for join and publish --watch; 0: no endpoint (env "
        f"{ENV['metrics_port']}; default %(default)s)",
    )
    common.add_argument(
        "--log-level",
        default=env.get("FLOWSCOPE_LOG_LEVEL", "INFO").upper(),
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level [env FLOWSCOPE_LOG_LEVEL]",
    )
    kafka_security.add_arguments(common, env)

    parser = argparse.ArgumentParser(
        prog="python -m enricher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{publish,join}")

    pub = sub.add_parser("publish", parents=[common], help="publish a file of k8s objects once")
    pub.add_argument(
        "--file",
        dest="metadata_file",
        default=default("metadata_file", None),
        help=f"YAML of Kubernetes objects, as `kubectl get -o yaml` prints (env "
        f"{ENV['metadata_file']})",
    )
    pub.add_argument(
        "--watch",
        type=flag,
        nargs="?",
        const=True,
        default=default("watch", False),
        help=f"watch a live cluster instead of reading a file (env {ENV['watch']})",
    )
    pub.add_argument(
        "--kubeconfig",
        default=default("kubeconfig", env.get("KUBECONFIG")),
        help=f"kubeconfig file (env {ENV['kubeconfig']}, then KUBECONFIG; default: the "
        f"in-cluster service account)",
    )
    pub.add_argument(
        "--context",
        dest="kube_context",
        default=default("kube_context", None),
        help=f"kubeconfig context (env {ENV['kube_context']}; default: the current one)",
    )
    pub.add_argument(
        "--leader-election",
        type=flag,
        default=default("leader_election", d.leader_election),
        help=f"stand by unless holding the Lease (env {ENV['leader_election']}; default "
        f"%(default)s)",
    )
    pub.add_argument(
        "--lease-namespace",
        default=default("lease_namespace", d.lease_namespace),
        help=f"namespace of the Lease (env {ENV['lease_namespace']}; default %(default)s)",
    )
    pub.add_argument(
        "--lease-name",
        default=default("lease_name", d.lease_name),
        help=f"name of the Lease (env {ENV['lease_name']}; default %(default)s)",
    )
    pub.add_argument(
        "--identity",
        default=default("identity", d.identity),
        help=f"this replica's name in the Lease (env {ENV['identity']}; default: host name "
        f"and a random suffix)",
    )
    for name, what in (
        ("lease_duration_s", "seconds a silent leader keeps the Lease"),
        ("renew_deadline_s", "seconds the leader tries to renew before standing down"),
        ("retry_period_s", "seconds between Lease attempts"),
    ):
        pub.add_argument(
            "--" + name.replace("_", "-"),
            type=positive(float, "--" + name.replace("_", "-")),
            default=default(name, getattr(d, name)),
            help=f"{what} (env {ENV[name]}; default %(default)s)",
        )
    pub.add_argument(
        "--watch-timeout-s",
        type=positive(int, "--watch-timeout-s"),
        default=default("watch_timeout_s", d.watch_timeout_s),
        help=f"server-side length of one watch request (env {ENV['watch_timeout_s']}; default "
        f"%(default)s)",
    )
    pub.add_argument(
        "--publish-labels",
        type=flag,
        default=default("publish_labels", d.publish_labels),
        help=f"carry pod labels in the metadata (env {ENV['publish_labels']}; default %(default)s)",
    )
    pub.add_argument(
        "--publish-annotations",
        type=annotation_keys,
        default=default("publish_annotations", d.publish_annotations),
        metavar="KEYS",
        help=f"pod annotation keys whose values the metadata carries, comma-separated; no "
        f"others ever are (env {ENV['publish_annotations']}; default: none)",
    )
    pub.add_argument(
        "--no-prune",
        dest="prune",
        action="store_false",
        help="do not tombstone keys in the topic that the file no longer has",
    )

    join = sub.add_parser("join", parents=[common], help="join raw records with metadata")
    join.add_argument(
        "--group",
        dest="consumer_group",
        default=default("consumer_group", d.consumer_group),
        help=f"consumer group for the raw topic (env {ENV['consumer_group']}; default %(default)s)",
    )
    join.add_argument(
        "--batch-size",
        type=positive(int, "--batch-size"),
        default=default("batch_size", d.batch_size),
        help=f"raw records per consume(), about (env {ENV['batch_size']}; default %(default)s)",
    )
    join.add_argument(
        "--dns",
        type=flag,
        default=default("dns", d.dns),
        help=f"also join DNS queries ({Settings().topics.raw_dns} -> "
        f"{Settings().topics.enriched_dns}; env {ENV['dns']}; default %(default)s)",
    )
    join.add_argument(
        "--batch-records",
        dest="output_batch_records",
        type=batch_records,
        default=default("output_batch_records", d.output_batch_records),
        help=f"enriched records per produced message, a JSON array when above 1 (1 to "
        f"{MAX_BATCH_RECORDS}; env {ENV['output_batch_records']}; default %(default)s)",
    )
    join.add_argument(
        "--deleted-pod-grace-s",
        type=positive(float, "--deleted-pod-grace-s"),
        default=default("deleted_pod_grace_s", d.deleted_pod_grace_s),
        help=f"how long a deleted pod still names its IP (env {ENV['deleted_pod_grace_s']}; "
        f"default %(default)s)",
    )
    join.add_argument(
        "--holdback-s",
        type=non_negative,
        default=default("holdback_s", d.holdback_s),
        help=f"seconds a record whose pod or peer has no metadata yet waits for it before it "
        f"is emitted as unresolved; 0 disables (env {ENV['holdback_s']}; default %(default)s)",
    )
    join.add_argument(
        "--holdback-max-records",
        type=positive(int, "--holdback-max-records"),
        default=default("holdback_max_records", d.holdback_max_records),
        help=f"records held at most; more are emitted unresolved at once and counted (env "
        f"{ENV['holdback_max_records']}; default %(default)s)",
    )
    join.add_argument(
        "--cluster-cidrs",
        type=cidrs("--cluster-cidrs"),
        default=default("cluster_cidrs", ""),
        help=f"this cluster's pod and service CIDRs, comma-separated; only unknown addresses "
        f"inside them are held back (env {ENV['cluster_cidrs']}; default: none, then every "
        f"private address is)",
    )
    join.add_argument(
        "--other-cluster-cidrs",
        type=cidrs("--other-cluster-cidrs"),
        default=default("other_cluster_cidrs", ""),
        help=f"CIDRs of other (peered) clusters, comma-separated; their peers are classified "
        f"as another cluster (env {ENV['other_cluster_cidrs']}; default: none)",
    )
    join.add_argument(
        "--exactly-once",
        type=flag,
        default=default("exactly_once", d.exactly_once),
        help=f"commit output and input offsets in Kafka transactions; false: at-least-once "
        f"(env {ENV['exactly_once']}; default %(default)s)",
    )
    join.add_argument(
        "--instance",
        default=default("instance", d.instance),
        help=f"this instance's stable name, e.g. its pod name: the transactional.id and the "
        f"static group membership derive from it, so a restart fences its zombie and resumes "
        f"at once; never shared by two live instances (env {ENV['instance']}; default: none)",
    )
    join.add_argument(
        "--commit-interval-s",
        type=positive(float, "--commit-interval-s"),
        default=default("commit_interval_s", d.commit_interval_s),
        help=f"seconds between transaction commits, the latency read_committed readers see "
        f"(env {ENV['commit_interval_s']}; default %(default)s)",
    )
    join.add_argument(
        "--commit-max-records",
        type=positive(int, "--commit-max-records"),
        default=default("commit_max_records", d.commit_max_records),
        help=f"input records per transaction at most (env {ENV['commit_max_records']}; "
        f"default %(default)s)",
    )
    join.add_argument(
        "--record-pod-labels",
        type=parse_globs,
        default=default("record_pod_labels", ",".join(d.record_pod_labels)),
        metavar="GLOBS",
        help=f"pod labels each end of a record carries (k8s.pod.label.<key>), comma-separated "
        f"globs (env {ENV['record_pod_labels']}; default %(default)s)",
    )
    join.add_argument(
        "--record-node-labels",
        type=parse_globs,
        default=default("record_node_labels", ""),
        metavar="GLOBS",
        help=f"node labels each end carries (k8s.node.label.<key>; zone and region are "
        f"fields already), comma-separated globs (env {ENV['record_node_labels']}; "
        f"default: none)",
    )
    return parser


def settings_from_args(args: argparse.Namespace, env: dict[str, str] | None = None) -> Settings:
    values = {k: v for k, v in vars(args).items() if k in Settings.__dataclass_fields__}
    values["kafka_security"] = kafka_security.from_args(args, env or {})
    for name in ("metadata_file", "kubeconfig"):
        if values.get(name):
            values[name] = Path(values[name])
    # argparse applies `type` to string defaults too, so env values are validated as well.
    return Settings(**values)


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
    from enricher.lease import LeaseConfig
    from enricher.livepublisher import WatchOptions, WatchPublisher

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
        ),
    )
    server = serve(settings.metrics_port, publisher.metrics)
    try:
        publisher.run(stop)
    finally:
        if server is not None:
            server.close()
    return 0


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("enricher").info("signal %d: stopping", signum)
        stop.set()

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
        parsed, prune=settings.prune
    )
    seen = ", ".join(f"{k}={n}" for k, n in sorted(parsed.seen.items()))
    print(f"read {path}: {seen or 'no objects'}")
    print(f"{report.summary()} to {settings.topics.metadata}")
    return 0


def join(settings: Settings) -> int:
    stop = _stop_on_signals()
    # Before the two joiners start: a refusal ends the start with one line, not two.
    wait_for_broker(settings.bootstrap_servers)
    if not settings.dns:
        joiner = Joiner(settings)
        server = serve(settings.metrics_port, joiner.metrics)
        try:
            joiner.run(stop)
        finally:
            if server is not None:
                server.close()
        return 0
    from enricher.dnsjoin import DnsJoiner
    from enricher.dnsnames import DnsNames

    failed: list[BaseException] = []
    # The DNS joiner feeds it, the TCP joiner names internet servers with it.
    names = DnsNames()
    joiner, dns_joiner = Joiner(settings, names=names), DnsJoiner(settings, names=names)

    def run_dns() -> None:
        try:
            dns_joiner.run(stop)
        except BaseException as exc:  # the whole enricher stops: a silent half is worse
            logging.getLogger("enricher.dns").exception("DNS joiner failed")
            failed.append(exc)
            stop.set()

    server = serve(settings.metrics_port, joiner.metrics, dns_joiner.counters.as_metrics)
    dns_thread = threading.Thread(target=run_dns, name="dns-join")
    dns_thread.start()
    try:
        joiner.run(stop)
    finally:
        stop.set()
        dns_thread.join(timeout=30)
        if server is not None:
            server.close()
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    env = dict(os.environ)
    args = build_parser(env).parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        settings = settings_from_args(args, env)
    except kafka_security.KafkaSecurityError as exc:
        print(f"enricher: {exc}", file=sys.stderr)
        return 2
    kafka_security.register(settings.bootstrap_servers, settings.kafka_security)
    try:
        return publish(settings) if args.command == "publish" else join(settings)
    except (EnricherError, KafkaUnavailable, ProducerFenced) as exc:
        print(f"enricher: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
