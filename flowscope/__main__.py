"""``python -m flowscope topics create|check``: every flowscope topic, for clusters that
forbid auto-creation or where topics must be reviewed before the services start.

create   create the missing topics with the planned partitions, replicas and settings;
         report existing ones that differ (exit 1 if any do)
check    report every missing topic and every difference (exit 1 if any)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from flowscope import kafka_security, provisioning
from flowscope.kafka import KafkaUnavailable, wait_for_broker
from flowscope.topics import DEFAULT_PREFIX, Topics


def _family_values(text: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        family, sep, number = item.partition("=")
        if not sep or not number.isdigit():
            raise argparse.ArgumentTypeError(f"{item!r}: use FAMILY=NUMBER, e.g. raw=24")
        values[family.strip()] = int(number)
    return values


def build_parser(env: dict[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flowscope",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{topics}")
    topics = sub.add_parser("topics", help="create or check every flowscope topic")
    topics.add_argument("action", choices=("create", "check"))
    topics.add_argument(
        "--bootstrap-servers",
        default=env.get("FLOWSCOPE_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka bootstrap servers (env FLOWSCOPE_BOOTSTRAP_SERVERS; default %(default)s)",
    )
    topics.add_argument(
        "--topic-prefix",
        default=env.get("FLOWSCOPE_TOPIC_PREFIX", DEFAULT_PREFIX),
        help="prefix of every topic name (env FLOWSCOPE_TOPIC_PREFIX; default %(default)s)",
    )
    families = ", ".join(provisioning.FAMILIES)
    defaults = ", ".join(f"{f}={p.partitions}" for f, p in provisioning.DEFAULT_POLICIES.items())
    topics.add_argument(
        "--partitions",
        type=_family_values,
        default=env.get("FLOWSCOPE_TOPIC_PARTITIONS", ""),
        help=f"partitions per family ({families}) as FAMILY=N,... (env "
        f"FLOWSCOPE_TOPIC_PARTITIONS; default {defaults})",
    )
    topics.add_argument(
        "--retention-ms",
        type=_family_values,
        default=env.get("FLOWSCOPE_TOPIC_RETENTION_MS", ""),
        help="retention per family as FAMILY=MS,... (env FLOWSCOPE_TOPIC_RETENTION_MS; default "
        "raw 1 day, enriched 3 days, metrics 7 days, alerts 30 days, metadata compacted)",
    )
    topics.add_argument(
        "--replication-factor",
        type=int,
        default=int(env["FLOWSCOPE_TOPIC_REPLICATION"])
        if env.get("FLOWSCOPE_TOPIC_REPLICATION")
        else None,
        help="replicas of every topic (env FLOWSCOPE_TOPIC_REPLICATION; default: 3, or the "
        "number of brokers if fewer); min.insync.replicas is one less (at least 1)",
    )
    kafka_security.add_arguments(topics, env)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    env = dict(os.environ)
    args = build_parser(env).parse_args(argv)
    try:
        security = kafka_security.from_args(args, env)
        policies = provisioning.with_overrides(
            args.partitions or None, args.replication_factor, args.retention_ms or None
        )
    except ValueError as exc:
        print(f"flowscope: {exc}", file=sys.stderr)
        return 2
    bootstrap = args.bootstrap_servers
    kafka_security.register(bootstrap, security)
    try:
        wait_for_broker(bootstrap)
        brokers = provisioning.broker_count(bootstrap)
        planned = provisioning.plan(Topics(args.topic_prefix), brokers, policies)
        if args.action == "create":
            created, problems = provisioning.create(bootstrap, planned)
            for name in created:
                print(f"created {name}")
        else:
            problems = provisioning.check(bootstrap, planned)
    except (KafkaUnavailable, ValueError, RuntimeError) as exc:
        print(f"flowscope: {exc}", file=sys.stderr)
        return 1
    for problem in problems:
        print(f"differs: {problem}")
    print(f"{len(planned)} topics planned, {len(problems)} differ ({brokers} brokers)")
    return 1 if problems else 0


def topics_main(argv: Sequence[str] | None = None) -> int:
    """``flowscope topics create|check``: the same command under the ``flowscope`` entry."""
    return main(["topics", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
