"""``python -m flowscope topics create|check``: every flowscope topic, for clusters that
forbid auto-creation or where topics must be reviewed before the services start.

create   create the missing topics with the planned partitions, replicas and settings;
         report existing ones that differ (exit 1 if any do)
check    report every missing topic and every difference (exit 1 if any)

``python -m flowscope settings-doc [--check]`` writes (or checks) docs/settings.md, the
reference of every command's settings, generated from their declarations.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from flowscope import kafka_security, provisioning, reference
from flowscope import settings as declared
from flowscope.kafka import KafkaUnavailable, wait_for_broker
from flowscope.settings import setting
from flowscope.topics import Topics


def _family_values(text: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        family, sep, number = item.partition("=")
        if not sep or not number.isdigit():
            raise ValueError(f"{item!r}: use FAMILY=NUMBER, e.g. raw=24")
        values[family.strip()] = int(number)
    return values


def _replicas(text: str) -> int | None:
    return int(text) if text else None


_FAMILIES = ", ".join(provisioning.FAMILIES)
_PARTITIONS = ", ".join(f"{f}={p.partitions}" for f, p in provisioning.DEFAULT_POLICIES.items())


@dataclass(frozen=True)
class TopicsSettings:
    bootstrap_servers: str = declared.bootstrap_servers()
    topic_prefix: str = declared.topic_prefix()
    partitions: Mapping[str, int] = setting(
        help=f"partitions per family ({_FAMILIES}) as FAMILY=N,...",
        env="FLOWSCOPE_TOPIC_PARTITIONS",
        factory=dict,
        parse=_family_values,
        shown=_PARTITIONS,
    )
    retention_ms: Mapping[str, int] = setting(
        help="retention per family as FAMILY=MS,...",
        env="FLOWSCOPE_TOPIC_RETENTION_MS",
        factory=dict,
        parse=_family_values,
        shown="raw 1 day, enriched 3 days, metrics 7 days, alerts 30 days, metadata compacted",
    )
    replication_factor: int | None = setting(
        None,
        "replicas of every topic; min.insync.replicas is one less (at least 1)",
        env="FLOWSCOPE_TOPIC_REPLICATION",
        parse=_replicas,
        shown="3, or the number of brokers if fewer",
    )
    log_level: str = declared.log_level()


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flowscope",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{topics,settings-doc}")
    topics = sub.add_parser("topics", help="create or check every flowscope topic")
    topics.add_argument("action", choices=("create", "check"))
    declared.add_arguments(topics, TopicsSettings, env)
    kafka_security.add_arguments(topics, env)
    doc = sub.add_parser("settings-doc", help="write docs/settings.md from the declarations")
    doc.add_argument("--output", type=Path, default=reference.DEFAULT_PATH)
    doc.add_argument("--check", action="store_true", help="exit 1 if the file differs")
    return parser


def settings_doc(output: Path, check: bool) -> int:
    text = reference.generate()
    current = output.read_text(encoding="utf-8") if output.is_file() else None
    if check:
        if current != text:
            print(
                f"{output} is out of date: run `python -m flowscope settings-doc`", file=sys.stderr
            )
            return 1
        return 0
    if current != text:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        print(f"wrote {output}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    env = dict(os.environ)
    args = build_parser(env).parse_args(argv)
    if args.command == "settings-doc":
        return settings_doc(args.output, args.check)
    try:
        security = kafka_security.from_args(args)
        settings: TopicsSettings = declared.from_args(TopicsSettings, args)
        policies = provisioning.with_overrides(
            settings.partitions or None,
            settings.replication_factor,
            settings.retention_ms or None,
        )
    except ValueError as exc:
        print(f"flowscope: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    bootstrap = settings.bootstrap_servers
    kafka_security.register(bootstrap, security)
    try:
        wait_for_broker(bootstrap)
        brokers = provisioning.broker_count(bootstrap)
        planned = provisioning.plan(Topics(settings.topic_prefix), brokers, policies)
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
