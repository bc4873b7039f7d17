"""The published JSON Schemas are current and agree with the msgspec record types.

A record type changed without regenerating ``schemas/`` fails here, and so does a schema that
accepts what the decoder rejects (or the reverse) for the usual kinds of breakage.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import msgspec
import pytest

from flowscope import records
from flowscope.codec import DecodeError, JsonCodec
from flowscope.records import (
    DeadLetter,
    Endpoint,
    EnrichedTcpConnection,
    RawTcpConnection,
    TcpPairMetric,
)
from flowscope.records.metadata import ContainerMeta, Meta, MetaCodec, NodeMeta, PodMeta

ROOT = Path(__file__).resolve().parents[3]
SCHEMA_DIR = ROOT / "schemas"


def _load_generator() -> ModuleType:
    # schemas/ is a folder of published files, not a package: load the script by path.
    spec = importlib.util.spec_from_file_location(
        "flowscope_schema_generate", SCHEMA_DIR / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


generate = _load_generator()

T0 = 1_764_000_000_000_000_000  # 2025-11-24, Unix epoch ns

SAMPLES: dict[type[msgspec.Struct], msgspec.Struct] = {
    RawTcpConnection: RawTcpConnection(
        node="node-a",
        start_time_ns=T0,
        end_time_ns=T0 + 5_000_000,
        role="client",
        family=4,
        local_addr="10.0.1.5",
        local_port=40312,
        remote_addr="10.96.0.20",
        remote_port=80,
        pid=4242,
        comm="curl",
        cgroup_id=12345,
        cgroup_path="kubepods/burstable/pod1234/abcdef",
        pod_uid="1234",
        container_id="abcdef",
        bytes_sent=1000,
        bytes_received=20000,
        srtt_us=180,
        retrans_segs=0,
        connect_latency_us=95,
    ),
    EnrichedTcpConnection: EnrichedTcpConnection(
        start_time_ns=T0,
        end_time_ns=T0 + 5_000_000,
        observer_node="node-a",
        observer_role="client",
        client_observed=True,
        network_type="ipv4",
        client=Endpoint(
            address="10.0.1.5",
            port=40312,
            attribution="pod",
            pod_name="web-7d9c-abcde",
            pod_uid="1234",
            namespace="shop",
            workload_kind="Deployment",
            workload_name="web",
            deployment="web",
            node="node-a",
            zone="zone-a",
            region="region-1",
            container_id="abcdef",
            pid=4242,
            command="curl",
        ),
        # Only the required keys: omitted optionals must validate too.
        server=Endpoint(address="10.0.2.7", port=80, attribution="unresolved"),
        bytes_client_to_server=1000,
        bytes_server_to_client=20000,
        connect_latency_us=95,
        srtt_us=180,
        retrans_segs=0,
        peer_class="cross_zone",
    ),
    TcpPairMetric: TcpPairMetric(
        window_start_ns=T0,
        window_end_ns=T0 + 10_000_000_000,
        client_workload="shop/Deployment/web",
        server_workload="shop/Deployment/api",
        client_namespace="shop",
        server_namespace="shop",
        client_zones=["zone-a"],
        server_zones=["zone-b"],
        peer_classes=["cross_zone"],
        connections=10,
        bytes_client_to_server=10_000,
        bytes_server_to_client=200_000,
        connect_latency_p50_us=95.0,
        connect_latency_p99_us=410.5,
        connect_latency_sketch={"kind": "ddsketch", "bins": {"12": 3}, "count": 10},
    ),
    DeadLetter: DeadLetter(
        stage="enricher",
        reason="RawTcpConnection: invalid field: Expected `int`, got `str` - at `$.pid`",
        source_topic="flowscope.raw.tcp",
        partition=0,
        offset=17,
        key=None,
        payload='{"pid": "x"}',
        time_ns=T0,
    ),
}


def _schema_for(record_type: Any) -> dict[str, Any]:
    published = next(p for p in generate.PUBLISHED if p.record_type is record_type)
    loaded: dict[str, Any] = json.loads((SCHEMA_DIR / published.filename).read_text())
    return loaded


def _validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _as_json(record: msgspec.Struct) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(JsonCodec(type(record)).encode(record))
    return document


def test_committed_schemas_match_the_record_types() -> None:
    problems = generate.differences()
    assert problems == [], "schemas/ is stale; run `python schemas/generate.py`:\n" + "\n".join(
        problems
    )
    assert generate.main(["--check"]) == 0


def test_check_reports_an_edited_a_missing_and_a_stale_file(tmp_path: Path) -> None:
    for name, text in generate.expected_files().items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert generate.differences(tmp_path) == []

    edited = tmp_path / "raw.tcp.v1.json"
    edited.write_text(edited.read_text().replace('"integer"', '"number"', 1), encoding="utf-8")
    (tmp_path / "deadletter.v1.json").unlink()
    (tmp_path / "old.tcp.v0.json").write_text("{}", encoding="utf-8")

    problems = generate.differences(tmp_path)
    assert len(problems) == 3
    assert problems[0].startswith("raw.tcp.v1.json: out of date\n")
    changed = [line.split() for line in problems[0].splitlines() if line[:1] in "+-"]
    assert ["-", '"type":', '"number",'] in changed
    assert ["+", '"type":', '"integer",'] in changed
    assert "deadletter.v1.json: missing" in problems
    assert "old.tcp.v0.json: not generated from any record type (remove it)" in problems

    assert generate.write(tmp_path) == ["raw.tcp.v1.json", "deadletter.v1.json"]
    # write() never deletes, so the stale file stays flagged until someone removes it.
    assert generate.differences(tmp_path) == [
        "old.tcp.v0.json: not generated from any record type (remove it)"
    ]


def test_every_schema_names_its_topic_and_has_a_unique_id() -> None:
    ids = set()
    for published in generate.PUBLISHED:
        schema = _schema_for(published.record_type)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == f"urn:flowscope:schema:{published.stem}"
        assert f"`{published.topic}`" in schema["description"]
        assert schema["title"] == published.title
        ids.add(schema["$id"])
    assert len(ids) == len(generate.PUBLISHED)
    # Every committed schema file is generated, and every generated one is committed.
    committed = sorted(f.name for f in generate.SCHEMA_DIR.glob("*.json"))
    assert sorted(p.filename for p in generate.PUBLISHED) == committed


def test_every_record_type_is_published_or_nested_in_a_published_one() -> None:
    defined = {
        name
        for name, value in vars(records).items()
        if isinstance(value, type)
        and issubclass(value, msgspec.Struct)
        and value.__module__ == records.__name__
    }
    covered = {name for p in generate.PUBLISHED for name in _schema_for(p.record_type)["$defs"]}
    assert defined - covered == set(), "record types with no published schema"


@pytest.mark.parametrize("record_type", list(SAMPLES), ids=lambda t: t.__name__)
def test_sample_record_validates(record_type: type[msgspec.Struct]) -> None:
    document = _as_json(SAMPLES[record_type])
    errors = list(_validator(_schema_for(record_type)).iter_errors(document))
    assert errors == []


# Breakages that both the published schema and the service's decoder must refuse.
BREAKAGES: list[tuple[type[msgspec.Struct], str, Any]] = [
    (RawTcpConnection, "pid", "4242"),
    (RawTcpConnection, "role", "observer"),
    (RawTcpConnection, "family", 5),
    (RawTcpConnection, "node", None),
    (EnrichedTcpConnection, "flowscope.peer.class", "same_planet"),
    (EnrichedTcpConnection, "client", {"address": "10.0.0.1", "port": 1}),
    (EnrichedTcpConnection, "end_time_unix_nano", 1.5),
    (TcpPairMetric, "client_zones", "zone-a"),
    (TcpPairMetric, "connect_latency_p50_us", "fast"),
    (DeadLetter, "offset", None),
]


@pytest.mark.parametrize(
    ("record_type", "field", "bad"),
    BREAKAGES,
    ids=[f"{t.__name__}.{f}={b!r}" for t, f, b in BREAKAGES],
)
def test_schema_and_decoder_both_reject(
    record_type: type[msgspec.Struct], field: str, bad: Any
) -> None:
    document = copy.deepcopy(_as_json(SAMPLES[record_type]))
    assert field in document
    document[field] = bad
    assert list(_validator(_schema_for(record_type)).iter_errors(document)) != []
    with pytest.raises(DecodeError):
        JsonCodec(record_type).decode(json.dumps(document).encode())


@pytest.mark.parametrize("record_type", list(SAMPLES), ids=lambda t: t.__name__)
def test_schema_and_decoder_both_reject_a_missing_required_field(
    record_type: type[msgspec.Struct],
) -> None:
    schema = _schema_for(record_type)
    required = schema["$defs"][record_type.__name__]["required"]
    assert required, "every record has required fields"
    document = _as_json(SAMPLES[record_type])
    del document[required[0]]
    assert list(_validator(schema).iter_errors(document)) != []
    with pytest.raises(DecodeError):
        JsonCodec(record_type).decode(json.dumps(document).encode())


def test_metadata_records_validate_and_the_schema_refuses_a_kind_it_does_not_know() -> None:
    codec = MetaCodec()
    pod = PodMeta(
        uid="u1",
        name="web-1",
        namespace="shop",
        node="n1",
        ips=["10.0.0.5"],
        start_time_ns=T0,
        workload_kind="Deployment",
        workload_name="web",
        containers=[ContainerMeta(name="web", image="web:1")],
    )
    node = NodeMeta(name="n1", zone="zone-a", region="r1", addresses=["192.0.2.1"])
    validator = _validator(_schema_for(Meta))
    for record in (pod, node):
        document = json.loads(codec.encode(record))
        assert list(validator.iter_errors(document)) == []
        assert codec.decode(json.dumps(document).encode()) == record
    wrong = {**json.loads(codec.encode(pod)), "kind": "Deployment"}
    assert list(validator.iter_errors(wrong)) != []
