"""The sink's tables: columns from the record types, offsets in the snapshot, evolution."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pyarrow as pa
from consumers_records import conn, pod

from consumers.sink import (
    EVENT_TIME,
    TableSink,
    _row,
    arrow_schema,
    committed_offsets,
    open_catalog,
    open_table,
)
from flowscope.records import EnrichedTcpConnection


class V1(msgspec.Struct, frozen=True, kw_only=True):
    time_ns: int
    name: str


class V2(msgspec.Struct, frozen=True, kw_only=True):
    time_ns: int
    name: str
    tags: list[str] = msgspec.field(default_factory=list)  # a field added later
    score: float | None = None


def test_columns_are_the_record_fields_with_endpoints_as_structs() -> None:
    schema = arrow_schema(EnrichedTcpConnection)
    assert schema.names == [*EnrichedTcpConnection.__struct_fields__, EVENT_TIME]
    client = schema.field("client").type
    assert isinstance(client, pa.StructType) and client.field("zone").type == pa.string()
    assert schema.field("connect_latency_us").type == pa.int64()


def test_offsets_ride_in_the_snapshot_and_a_new_field_becomes_a_column(tmp_path: Path) -> None:
    catalog = open_catalog(str(tmp_path), {})
    table = open_table(catalog, "lake.things", arrow_schema(V1))
    sink = TableSink(table, arrow_schema(V1), "time_ns")
    sink.add([V1(time_ns=10**18, name="a")], "t", 0, 41)
    assert sink.flush() == 1
    assert committed_offsets(catalog.load_table("lake.things")) == {("t", 0): 42}

    table = open_table(catalog, "lake.things", arrow_schema(V2))  # the record gained fields
    sink = TableSink(table, arrow_schema(V2), "time_ns")
    assert sink.offsets == {("t", 0): 42}  # resumed from the table, not from Kafka
    sink.add([V2(time_ns=10**18, name="b", tags=["x"], score=0.5)], "t", 1, 6)
    sink.flush()
    rows = sorted(
        catalog.load_table("lake.things").scan().to_arrow().to_pylist(), key=lambda r: r["name"]
    )
    assert [(r["name"], r["tags"], r["score"]) for r in rows] == [
        ("a", None, None),
        ("b", ["x"], 0.5),
    ]
    assert committed_offsets(catalog.load_table("lake.things")) == {("t", 0): 42, ("t", 1): 7}


def test_rows_of_an_enriched_connection_round_trip(tmp_path: Path) -> None:
    catalog = open_catalog(str(tmp_path), {})
    schema = arrow_schema(EnrichedTcpConnection)
    sink = TableSink(open_table(catalog, "lake.tcp", schema), schema, "end_time_ns")
    record = conn(pod("web", "shop"), pod("db", "shop"), outcome="refused")
    sink.add([record], "t", 0, 0)
    sink.flush()
    (row,) = catalog.load_table("lake.tcp").scan().to_arrow().to_pylist()
    row.pop(EVENT_TIME)
    assert row == _row(record)
    assert row["client"]["workload_name"] == "web" and row["outcome"] == "refused"
