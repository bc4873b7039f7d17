"""``flowscope sink``: the enriched TCP and DNS streams into Apache Iceberg tables.

The default needs no server: pyiceberg's SQL catalog on a SQLite file and a local warehouse
directory (``--warehouse``). Any other catalog or object store is configuration: pyiceberg
catalog properties in ``--catalog-properties`` (``type=rest,uri=...,s3.endpoint=...``)
replace the SQLite default.

- Tables ``<namespace>.enriched_tcp`` and ``<namespace>.enriched_dns``: one column per record
  field (Python names; an Endpoint is a struct), every column optional, plus ``event_time``
  (end of the connection / time of the query, microseconds, UTC) that the tables are
  partitioned by, with Iceberg's hour transform: one partition per date and hour.
- Schema from the record types themselves (the ones schemas/ is generated from): a field added
  to a record is added to the table on the next start (union by name); nothing is dropped.
- Exactly-once: each append commits, in one Iceberg snapshot, the data files and the Kafka
  offsets after the last record they hold (snapshot property ``flowscope.offsets``). On
  start the sink resumes from the offsets of each table's current snapshot, not from a
  consumer group: a kill -9 between two commits leaves at most unreferenced data files
  (never read) and the records after the last commit are read again, once.
- Files sized for queries: rows are buffered per table and appended when ``--max-rows`` are
  buffered or the oldest buffered record waited ``--max-seconds``; never one per message.
- Undecodable messages are counted (and their offsets committed past) in the counters line
  printed on stderr every ``--status-interval-seconds`` and at exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import msgspec
import pyarrow as pa
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table
from pyiceberg.transforms import HourTransform

from consumers.catalog import RecordDecoder, resolve_topic
from consumers.options import (
    BOOTSTRAP,
    LOG_LEVEL,
    PREFIX,
    Option,
    add_options,
    parse_args,
    positive,
)
from flowscope.codec import DecodeError
from flowscope.kafka import TopicFollower
from flowscope.records import EnrichedDnsQuery, EnrichedTcpConnection
from flowscope.topics import Topics

OFFSETS = "flowscope.offsets"  # snapshot property: {"topic:partition": next offset}
EVENT_TIME = "event_time"

# stream (topic suffix) -> table name, record type, field giving the event time (ns)
STREAMS: Mapping[str, tuple[str, type[Any], str]] = {
    "enriched.tcp": ("enriched_tcp", EnrichedTcpConnection, "end_time_ns"),
    "enriched.dns": ("enriched_dns", EnrichedDnsQuery, "time_ns"),
}


def _properties(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"expected key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


OPTIONS = (
    BOOTSTRAP,
    PREFIX,
    LOG_LEVEL,
    Option(
        "warehouse",
        "FLOWSCOPE_SINK_WAREHOUSE",
        "flowscope-lake",
        "local warehouse directory of the default SQLite catalog (catalog.db and the table files)",
    ),
    Option(
        "catalog_properties",
        "FLOWSCOPE_SINK_CATALOG_PROPERTIES",
        "",
        "pyiceberg "
        "catalog properties k=v,k=v (another catalog or object store; empty: SQLite in "
        "--warehouse)",
        _properties,
    ),
    Option("namespace", "FLOWSCOPE_SINK_NAMESPACE", "flowscope", "Iceberg namespace of the tables"),
    Option(
        "streams",
        "FLOWSCOPE_SINK_STREAMS",
        "enriched.tcp,enriched.dns",
        f"topics to sink (of {', '.join(STREAMS)})",
    ),
    Option(
        "max_rows",
        "FLOWSCOPE_SINK_MAX_ROWS",
        "200000",
        "rows per append (one or a few files per hour partition)",
        positive(int),
    ),
    Option(
        "max_seconds",
        "FLOWSCOPE_SINK_MAX_SECONDS",
        "60",
        "longest a buffered record waits for its append",
        positive(float),
    ),
    Option(
        "status_interval_seconds",
        "FLOWSCOPE_SINK_STATUS_INTERVAL_SECONDS",
        "60",
        "seconds between two counter lines on stderr",
        positive(float),
    ),
)


# -- schema: record types -> Arrow ------------------------------------------------------------


def _arrow(t: msgspec.inspect.Type) -> pa.DataType:
    mi = msgspec.inspect
    if isinstance(t, mi.Metadata):  # Annotated[...] with a description
        return _arrow(t.type)
    if isinstance(t, mi.UnionType):
        rest = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if len(rest) != 1:
            raise TypeError(f"no column type for the union {t}")
        return _arrow(rest[0])
    if isinstance(t, mi.BoolType):
        return pa.bool_()
    if isinstance(t, mi.IntType):
        return pa.int64()
    if isinstance(t, mi.FloatType):
        return pa.float64()
    if isinstance(t, mi.StrType):
        return pa.string()
    if isinstance(t, mi.LiteralType) and all(isinstance(v, str) for v in t.values):
        return pa.string()
    if isinstance(t, mi.StructType):
        return pa.struct([pa.field(f.name, _arrow(f.type)) for f in t.fields])
    if isinstance(t, mi.ListType):
        return pa.list_(_arrow(t.item_type))
    if isinstance(t, mi.DictType):
        return pa.map_(_arrow(t.key_type), _arrow(t.value_type))
    raise TypeError(f"no column type for {t}")


def arrow_schema(record_type: type[Any]) -> pa.Schema:
    info = msgspec.inspect.type_info(record_type)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = [pa.field(f.name, _arrow(f.type)) for f in info.fields]
    return pa.schema([*fields, pa.field(EVENT_TIME, pa.timestamp("us", tz="UTC"))])


def _row(value: Any) -> Any:
    if isinstance(value, msgspec.Struct):
        return {f: _row(getattr(value, f)) for f in value.__struct_fields__}
    if isinstance(value, list):
        return [_row(v) for v in value]
    if isinstance(value, dict):
        return [(k, _row(v)) for k, v in value.items()]
    if value is msgspec.UNSET:  # a field the record leaves out (server.address): a null
        return None
    return value


def rows(records: Sequence[Any], time_field: str) -> list[dict[str, Any]]:
    out = []
    for r in records:
        row = _row(r)
        row[EVENT_TIME] = getattr(r, time_field) // 1000  # ns -> us
        out.append(row)
    return out


# -- tables ------------------------------------------------------------------------------------


def open_catalog(warehouse: str, properties: Mapping[str, str]) -> Catalog:
    if properties:
        return load_catalog("flowscope", **properties)
    root = Path(warehouse).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return load_catalog(
        "flowscope",
        type="sql",
        uri=f"sqlite:///{root / 'catalog.db'}",
        warehouse=root.as_uri(),
    )


def open_table(catalog: Catalog, identifier: str, schema: pa.Schema) -> Table:
    namespace = identifier.rsplit(".", 1)[0]
    catalog.create_namespace_if_not_exists(namespace)
    try:
        table = catalog.load_table(identifier)
    except NoSuchTableError:
        table = catalog.create_table_if_not_exists(identifier, schema=schema)
        with table.update_spec() as spec:
            spec.add_field(EVENT_TIME, HourTransform(), "event_hour")
        return catalog.load_table(identifier)
    with table.update_schema() as update:
        update.union_by_name(schema)  # fields added to the record since; none dropped
    return catalog.load_table(identifier)


def committed_offsets(table: Table) -> dict[tuple[str, int], int]:
    snapshot = table.current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return {}
    text = snapshot.summary.additional_properties.get(OFFSETS)
    if not text:
        return {}
    out = {}
    for key, offset in json.loads(text).items():
        topic, _, partition = key.rpartition(":")
        out[(topic, int(partition))] = int(offset)
    return out


@dataclass
class SinkCounters:
    records: int = 0  # appended (committed) rows
    appends: int = 0
    undecodable: int = 0
    last_error: str | None = None
    rows_by_table: dict[str, int] = field(default_factory=dict)


class TableSink:
    """One table: buffered rows and the offsets that go with them."""

    def __init__(self, table: Table, schema: pa.Schema, time_field: str) -> None:
        self.table = table
        self.schema = schema
        self.time_field = time_field
        self.offsets = committed_offsets(table)  # as committed with the data
        self.pending: list[dict[str, Any]] = []
        self.pending_offsets: dict[tuple[str, int], int] = {}
        self.oldest: float | None = None

    def add(self, records: Sequence[Any], topic: str, partition: int, offset: int) -> None:
        self.pending.extend(rows(records, self.time_field))
        self.pending_offsets[(topic, partition)] = offset + 1
        if self.oldest is None:
            self.oldest = time.monotonic()

    def due(self, max_rows: int, max_seconds: float) -> bool:
        if not self.pending_offsets:
            return False
        return len(self.pending) >= max_rows or (
            self.oldest is not None and time.monotonic() - self.oldest >= max_seconds
        )

    def flush(self) -> int:
        """Append the buffered rows and their offsets in one snapshot; returns the rows."""
        if not self.pending_offsets:
            return 0
        offsets = {**self.offsets, **self.pending_offsets}
        props = {OFFSETS: json.dumps({f"{t}:{p}": o for (t, p), o in sorted(offsets.items())})}
        data = pa.Table.from_pylist(self.pending, schema=self.schema)
        # Undecodable messages alone still move the offsets: an append of no rows records them.
        self.table.append(data, snapshot_properties=props)
        n = len(self.pending)
        self.offsets = offsets
        self.pending, self.pending_offsets, self.oldest = [], {}, None
        return n


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flowscope sink",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, OPTIONS, dict(os.environ))
    args = parse_args(parser, argv)
    topics = Topics(args.topic_prefix)
    catalog = open_catalog(args.warehouse, args.catalog_properties)
    sinks: dict[str, TableSink] = {}
    decoders: dict[str, RecordDecoder] = {}
    for name in filter(None, (s.strip() for s in args.streams.split(","))):
        kind = resolve_topic(name, topics)
        if kind.suffix not in STREAMS:
            parser.error(f"--streams: {name!r} is not one of {', '.join(STREAMS)}")
        table_name, record_type, time_field = STREAMS[kind.suffix]
        schema = arrow_schema(record_type)
        table = open_table(catalog, f"{args.namespace}.{table_name}", schema)
        sinks[kind.topic] = TableSink(table, schema, time_field)
        decoders[kind.topic] = RecordDecoder(record_type)
    resume = {tp: o for s in sinks.values() for tp, o in s.offsets.items()}
    follower = TopicFollower(args.bootstrap_servers, list(sinks), "earliest", resume=resume)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    counters = SinkCounters()
    print(
        f"sink ready: {', '.join(sinks)} -> {args.namespace}.* "
        f"(resuming at {json.dumps({f'{t}:{p}': o for (t, p), o in resume.items()})})",
        flush=True,
    )
    last_status = time.monotonic()

    def flush(sink: TableSink) -> None:
        n = sink.flush()
        counters.appends += 1
        counters.records += n
        name = sink.table.name()[-1]
        counters.rows_by_table[name] = counters.rows_by_table.get(name, 0) + n

    try:
        while not stop.is_set():
            for msg in follower.poll(0.5):
                sink = sinks[msg.topic]
                try:
                    records = decoders[msg.topic].decode(msg.value)
                except DecodeError as exc:
                    counters.undecodable += 1
                    counters.last_error = str(exc)
                    records = []
                sink.add(records, msg.topic, msg.partition, msg.offset)
                if sink.due(args.max_rows, args.max_seconds):  # a poll can bring many files' worth
                    flush(sink)
            for sink in sinks.values():
                if sink.due(args.max_rows, args.max_seconds):  # the time bound
                    flush(sink)
            if time.monotonic() - last_status >= args.status_interval_seconds:
                last_status = time.monotonic()
                print(json.dumps(asdict(counters)), file=sys.stderr, flush=True)
        for sink in sinks.values():  # stopped cleanly: what is buffered is committed
            flush(sink)
    finally:
        follower.close()
        print(json.dumps(asdict(counters)), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
