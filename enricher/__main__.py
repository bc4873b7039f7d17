"""``python -m enricher publish|join``: the only place that reads the environment.

publish  read a file of Kubernetes objects, write slim metadata to the compacted topic, exit
join     join raw TCP records with the metadata topic and produce enriched records
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
from types import FrameType
from typing import TypeVar

from enricher import EnricherError
from enricher.joiner import Joiner
from enricher.kubeobjects import parse_text
from enricher.publisher import MetadataPublisher
from enricher.settings import Settings
from flowscope.kafka import KafkaUnavailable, wait_for_broker

N = TypeVar("N", int, float)

ENV = {
    "bootstrap_servers": "FLOWSCOPE_BOOTSTRAP_SERVERS",
    "topic_prefix": "FLOWSCOPE_TOPIC_PREFIX",
    "consumer_group": "FLOWSCOPE_ENRICHER_GROUP",
    "metadata_file": "FLOWSCOPE_METADATA_FILE",
    "stats_interval_s": "FLOWSCOPE_ENRICHER_STATS_INTERVAL_S",
    "batch_size": "FLOWSCOPE_ENRICHER_BATCH_SIZE",
    "deleted_pod_grace_s": "FLOWSCOPE_ENRICHER_DELETED_POD_GRACE_S",
}


def _positive(kind: Callable[[str], N], what: str) -> Callable[[str], N]:
    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}: {text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{what}: must be > 0, got {text!r}")
        return value

    return parse


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
    common.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])

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
        "--stats-interval-s",
        type=_positive(float, "--stats-interval-s"),
        default=default("stats_interval_s", d.stats_interval_s),
        help=f"seconds between counter log lines (env {ENV['stats_interval_s']}; "
        f"default %(default)s)",
    )
    join.add_argument(
        "--batch-size",
        type=_positive(int, "--batch-size"),
        default=default("batch_size", d.batch_size),
        help=f"raw records per consume() (env {ENV['batch_size']}; default %(default)s)",
    )
    join.add_argument(
        "--deleted-pod-grace-s",
        type=_positive(float, "--deleted-pod-grace-s"),
        default=default("deleted_pod_grace_s", d.deleted_pod_grace_s),
        help=f"how long a deleted pod still names its IP (env {ENV['deleted_pod_grace_s']}; "
        f"default %(default)s)",
    )
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    values = {k: v for k, v in vars(args).items() if k in Settings.__dataclass_fields__}
    if values.get("metadata_file") is not None:
        values["metadata_file"] = Path(values["metadata_file"])
    # argparse applies `type` to string defaults too, so env values are validated as well.
    return Settings(**values)


def publish(settings: Settings) -> int:
    path = settings.metadata_file
    if path is None:
        print(f"publish needs --file or {ENV['metadata_file']}", file=sys.stderr)
        return 2
    if not path.is_file():
        print(f"metadata file not found: {path}", file=sys.stderr)
        return 2
    parsed = parse_text(path.read_text())
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
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("enricher").info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    Joiner(settings).run(stop)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(dict(os.environ)).parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    settings = settings_from_args(args)
    try:
        return publish(settings) if args.command == "publish" else join(settings)
    except (EnricherError, KafkaUnavailable) as exc:
        print(f"enricher: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
