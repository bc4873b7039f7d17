"""Write the published JSON Schemas of every record that crosses a flowscope Kafka topic.

The schemas are generated from the msgspec types in ``flowscope/records/`` (the one source
of truth) and committed, so that consumers outside the project can read them without Python.
``--check`` regenerates in memory and fails when a committed file differs: CI runs it so that
a changed record type cannot ship with stale schemas.

    python schemas/generate.py           # rewrite schemas/*.json
    python schemas/generate.py --check   # exit 1 (with a diff) if they are out of date
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from flowscope import SCHEMA_VERSION
from flowscope.records import (
    AlertEvent,
    CollectorHealth,
    CostPairMetric,
    CostRollupMetric,
    DeadLetter,
    DnsMetric,
    EnrichedDnsQuery,
    EnrichedTcpConnection,
    EnrichedUdpFlow,
    PathHealthMetric,
    RawDnsQuery,
    RawPacketDrops,
    RawTcpConnection,
    RawUdpFlow,
    TcpLatencyMetric,
    TcpPairMetric,
)
from flowscope.records.metadata import Meta
from flowscope.topics import DEFAULT_PREFIX, Topics

SCHEMA_DIR = Path(__file__).resolve().parent
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
# No public domain is registered for the project, so the $id is a URN rather than a URL that
# would pretend to be fetchable. It is stable: consumers may key caches and registries on it.
ID_PREFIX = "urn:flowscope:schema:"


@dataclass(frozen=True)
class PublishedSchema:
    """One record type, the topic that carries it, and the file its schema is written to."""

    record_type: Any  # a msgspec Struct, or a union of tagged Structs
    topic: str  # full topic name with the default prefix
    # For a union: its name and what its messages are (a Struct brings its own).
    name: str | None = None
    doc: str | None = None

    @property
    def topic_suffix(self) -> str:
        """The topic name without the deployment prefix: ``enriched.tcp``."""
        return self.topic.removeprefix(DEFAULT_PREFIX + ".")

    @property
    def title(self) -> str:
        return self.name or self.record_type.__name__

    @property
    def stem(self) -> str:
        return f"{self.topic_suffix}.v{SCHEMA_VERSION}"

    @property
    def filename(self) -> str:
        return f"{self.stem}.json"


_TOPICS = Topics()
PUBLISHED: tuple[PublishedSchema, ...] = (
    PublishedSchema(RawTcpConnection, _TOPICS.raw_tcp),
    PublishedSchema(EnrichedTcpConnection, _TOPICS.enriched_tcp),
    PublishedSchema(TcpPairMetric, _TOPICS.metrics_tcp_pairs),
    PublishedSchema(DeadLetter, _TOPICS.deadletter),
    PublishedSchema(RawDnsQuery, _TOPICS.raw_dns),
    PublishedSchema(RawUdpFlow, _TOPICS.raw_udp),
    PublishedSchema(EnrichedUdpFlow, _TOPICS.enriched_udp),
    PublishedSchema(CollectorHealth, _TOPICS.collector_health),
    PublishedSchema(TcpLatencyMetric, _TOPICS.metrics_tcp_latency),
    PublishedSchema(CostPairMetric, _TOPICS.metrics_cost_pairs),
    PublishedSchema(CostRollupMetric, _TOPICS.metrics_cost_rollups),
    PublishedSchema(AlertEvent, _TOPICS.alerts),
    PublishedSchema(EnrichedDnsQuery, _TOPICS.enriched_dns),
    PublishedSchema(DnsMetric, _TOPICS.metrics_dns),
    PublishedSchema(RawPacketDrops, _TOPICS.raw_drops),
    PublishedSchema(PathHealthMetric, _TOPICS.metrics_path_health),
    PublishedSchema(
        Meta,
        _TOPICS.metadata,
        name="Meta",
        doc="Slim Kubernetes metadata, one object per message, tagged by `kind` (Pod, Node, "
        "Service) and keyed `<Kind>/<namespace>/<name>` (`Node/<name>`); the topic is "
        "compacted and a null value (tombstone) means the object was deleted.",
    ),
)


def _schema_hook(type_: type) -> dict[str, Any]:
    # msgspec decodes a field typed ``object`` as any JSON value but has no schema for it;
    # an empty schema would be read as "unsupported", so say it in words instead.
    if type_ is object:
        return {"description": "Any JSON value."}
    raise NotImplementedError


def _first_paragraph(doc: str | None) -> str:
    return " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())


def _clean_descriptions(node: Any) -> None:
    # msgspec copies docstrings verbatim, source indentation included; consumers read these.
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                node[key] = inspect.cleandoc(value)
            else:
                _clean_descriptions(value)
    elif isinstance(node, list):
        for item in node:
            _clean_descriptions(item)


def build(published: PublishedSchema) -> dict[str, Any]:
    """The complete schema document for one record type."""
    body = msgspec.json.schema(published.record_type, schema_hook=_schema_hook)
    _clean_descriptions(body)
    description = (
        f"Value of the Kafka topic `{published.topic}` (`<prefix>.{published.topic_suffix}` when "
        f"FLOWSCOPE_TOPIC_PREFIX is not `{DEFAULT_PREFIX}`), JSON encoded, one record per "
        f"message. {_first_paragraph(published.doc or published.record_type.__doc__)} "
        "Times are Unix epoch nanoseconds, byte counts are TCP payload bytes, latencies are "
        "microseconds. Unknown properties must be ignored: fields may be added within a version."
    )
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"{ID_PREFIX}{published.stem}",
        "title": published.title,
        "description": description,
        **body,
    }


def render(published: PublishedSchema) -> str:
    """Stable text of one schema file: fixed key order and indentation, trailing newline."""
    return json.dumps(build(published), indent=2, ensure_ascii=False) + "\n"


def expected_files() -> dict[str, str]:
    return {p.filename: render(p) for p in PUBLISHED}


def differences(directory: Path = SCHEMA_DIR) -> list[str]:
    """Human-readable problems with the committed files; empty when they are up to date."""
    problems: list[str] = []
    expected = expected_files()
    for name, text in expected.items():
        path = directory / name
        if not path.exists():
            problems.append(f"{name}: missing")
            continue
        committed = path.read_text(encoding="utf-8")
        if committed != text:
            diff = difflib.unified_diff(
                committed.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=f"committed/{name}",
                tofile=f"generated/{name}",
            )
            problems.append(f"{name}: out of date\n{''.join(diff)}")
    # A schema left behind by a renamed or removed record would mislead consumers.
    for stale in sorted(p.name for p in directory.glob("*.json") if p.name not in expected):
        problems.append(f"{stale}: not generated from any record type (remove it)")
    return problems


def write(directory: Path = SCHEMA_DIR) -> list[str]:
    """Write every schema file; returns the names that changed."""
    changed = []
    for name, text in expected_files().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(name)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 and print a diff if the committed schemas are out of date",
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = differences()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(
                "schemas are out of date: run `python schemas/generate.py` and commit the result",
                file=sys.stderr,
            )
            return 1
        print(f"{len(PUBLISHED)} schemas up to date")
        return 0
    changed = write()
    print(f"wrote {', '.join(changed)}" if changed else f"{len(PUBLISHED)} schemas up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
