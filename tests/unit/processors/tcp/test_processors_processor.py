from __future__ import annotations

import logging
from pathlib import Path

import msgspec
import pytest

from flowscope.codec import JsonCodec
from flowscope.records import DeadLetter, EnrichedTcpConnection, TcpPairMetric
from processors.__main__ import main
from processors.core.stage import Source
from processors.cost.prices import load_price_table
from processors.settings import ProcessorSettings, SettingsError
from processors.tcp.processor import ConnectionProcessor

REPO = Path(__file__).resolve().parents[4]

S = 1_000_000_000
T0 = 1_700_000_000 * S
SRC = Source("p.enriched.tcp", 1, 42, b"k")


def encoded(end_ns: int, **changes: object) -> bytes:
    body = {
        "start_time_unix_nano": end_ns - 10,
        "end_time_unix_nano": end_ns,
        "flowscope.observer.node": "n1",
        "flowscope.observer.role": "client",
        "flowscope.client.observed": True,
        "network.type": "ipv4",
        "client": {
            "address": "10.0.0.1",
            "port": 1234,
            "flowscope.attribution": "pod",
            "k8s.namespace.name": "a",
            "flowscope.workload.kind": "Deployment",
            "flowscope.workload.name": "web",
        },
        "server": {"address": "10.0.0.2", "port": 80, "flowscope.attribution": "external"},
        "bytes_client_to_server": 5,
        "bytes_server_to_client": 7,
        "connect_latency_us": 300,
        "srtt_us": 1,
        "retrans_segs": 0,
        "flowscope.peer.class": "internet",
        **changes,
    }
    # Round trip through the real type so the fixture cannot drift from the contract.
    JsonCodec(EnrichedTcpConnection).decode(msgspec.json.encode(body))
    return msgspec.json.encode(body)


def processor() -> ConnectionProcessor:
    return ConnectionProcessor(
        window_ns=10 * S,
        grace_ns=5 * S,
        idle_allowance_ns=10 * S,
        prices=load_price_table(REPO / "config" / "prices.yaml"),
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{nope", "not valid JSON"),
        (None, "empty message"),
        (b'{"end_time_unix_nano": 1}', "invalid field"),
        (encoded(T0, bytes_client_to_server=-1), "negative volume"),
    ],
)
def test_bad_message_becomes_a_dead_letter(value: bytes | None, reason: str) -> None:
    p = processor()
    newest, out = p.handle(value, SRC, now_ns=T0)
    assert newest is None and len(out) == 1
    dead = JsonCodec(DeadLetter).decode(out[0])
    assert reason in dead.reason
    assert (dead.stage, dead.source_topic, dead.partition, dead.offset, dead.key) == (
        "processors.tcp",
        "p.enriched.tcp",
        1,
        42,
        "k",
    )
    if reason != "negative volume":
        assert dead.payload == ("" if value is None else value.decode())
    assert p.report()["dead_lettered"] == 1
    assert p.report()["counted"] == 0


def test_good_messages_publish_keyed_metrics_when_the_watermark_passes() -> None:
    p = processor()
    assert p.handle(encoded(T0 + S), SRC, now_ns=T0 + S) == (T0, [])
    assert p.handle(encoded(T0 + 2 * S), SRC, now_ns=T0 + 2 * S) == (T0, [])
    # Newest event T0+2s: the window [T0, T0+10s) closes once events or the clock reach 15 s.
    assert p.close_ready(now_ns=T0 + 14 * S) == []
    ready = p.close_ready(now_ns=T0 + 25 * S)  # idle: now - 10 s = T0 + 15 s
    kinds = sorted(o.kind for o in ready)
    # Cost roll-ups: the workload, its namespace and the (unnamed) external destination.
    assert kinds == [
        "cost_pairs",
        "cost_rollups",
        "cost_rollups",
        "cost_rollups",
        "latency",
        "pairs",
    ]
    pair = next(o for o in ready if o.kind == "pairs")
    assert pair.key == b"a/Deployment/web|external/10.0.0.2"
    metric = JsonCodec(TcpPairMetric).decode(pair.value)
    assert (metric.connections, metric.bytes_client_to_server) == (2, 10)
    assert metric.window_start_ns == T0
    assert p.aggregator.is_closed(T0)


def test_a_batch_message_counts_every_record_and_dead_letters_only_the_bad_one() -> None:
    p = processor()
    good = [msgspec.json.decode(encoded(T0 + i * S)) for i in range(3)]
    bad = msgspec.json.decode(encoded(T0 + 4 * S, srtt_us=-5))
    batch = msgspec.json.encode([good[0], bad, good[1], good[2]])
    newest, dead = p.handle(batch, SRC, now_ns=T0)
    assert newest == T0 and len(dead) == 1
    letter = JsonCodec(DeadLetter).decode(dead[0])
    assert "srtt_us=-5" in letter.reason and '"srtt_us":-5' in letter.payload
    report = p.report()
    assert (report["records"], report["counted"], report["dead_lettered"]) == (3, 3, 1)
    assert report["messages"] == 1


def test_late_record_is_logged_once_per_report(caplog: pytest.LogCaptureFixture) -> None:
    p = processor()
    p.handle(encoded(T0 + S), SRC, now_ns=T0)
    p.close_ready(now_ns=T0 + 30 * S)
    with caplog.at_level(logging.WARNING, logger="processors.tcp.processor"):
        for _ in range(3):
            assert p.handle(encoded(T0 + 2 * S), SRC, now_ns=T0 + 30 * S) == (None, [])
    assert len([r for r in caplog.records if "late record dropped" in r.message]) == 1
    report = p.report()
    assert (report["late_dropped"], report["late_since_last_report"]) == (3, 3)
    assert p.report()["late_since_last_report"] == 0


def test_revoked_partition_is_dropped_and_never_published() -> None:
    p = processor()
    p.handle(encoded(T0 + S), Source("t", 0, 1, None), now_ns=T0)
    p.handle(encoded(T0 + S), Source("t", 1, 1, None), now_ns=T0)
    assert p.drop_partitions([1]) == 1
    ready = p.close_ready(now_ns=T0 + 30 * S)
    pairs = [JsonCodec(TcpPairMetric).decode(o.value) for o in ready if o.kind == "pairs"]
    assert [m.connections for m in pairs] == [1]
    assert p.report()["dropped_on_revoke"] == 1


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"window_s": 0}, "window"),
        ({"grace_s": -1}, "grace"),
        ({"web_port": 70000}, "web port"),
        ({"log_level": "LOUD"}, "DEBUG, INFO, WARNING, ERROR"),
        ({"app_id": "has space"}, "app id"),
        ({"sketch_alpha": 1.5}, "alpha"),
    ],
)
def test_invalid_settings_name_the_valid_values(changes: dict[str, object], match: str) -> None:
    with pytest.raises(SettingsError, match=match):
        ProcessorSettings(**changes)  # type: ignore[arg-type]


def test_cli_rejects_invalid_values_before_any_io(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--window-seconds", "-2"]) == 2
    assert "window must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["worker", "--grace-seconds", "soon"])
    assert "FLOWSCOPE_PROCESSORS_GRACE_SECONDS" in capsys.readouterr().err


def test_cli_env_defaults(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLOWSCOPE_LOG_LEVEL", "chatty")
    assert main(["worker"]) == 2
    assert "DEBUG, INFO, WARNING, ERROR" in capsys.readouterr().err


def test_cli_rejects_an_unknown_cloud_and_a_missing_price_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["worker", "--cloud", "ibm"]) == 2
    assert "aws, gcp, azure, custom" in capsys.readouterr().err
    assert main(["worker", "--prices", str(tmp_path / "none.yaml")]) == 2
    assert "cannot read the price table" in capsys.readouterr().err
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: x, metric: dns.nope, group_by: [a], threshold: 1}\n")
    assert main(["worker", "--alert-rules", str(rules)]) == 2
    assert "unknown metric 'dns.nope'" in capsys.readouterr().err
