from __future__ import annotations

import logging

import msgspec
import pytest

from flowscope.codec import JsonCodec
from flowscope.records import DeadLetter, EnrichedTcpConnection, TcpPairMetric
from processors.__main__ import main
from processors.settings import ProcessorSettings, SettingsError
from processors.tcp_pairs import Source, TcpPairsProcessor

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


def processor() -> TcpPairsProcessor:
    return TcpPairsProcessor(window_ns=10 * S, grace_ns=5 * S, idle_allowance_ns=10 * S)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{nope", "not valid JSON"),
        (None, "empty message"),
        (b'{"end_time_unix_nano": 1}', "invalid field"),
        (encoded(T0, bytes_client_to_server=-1), "negative bytes"),
    ],
)
def test_bad_message_becomes_a_dead_letter(value: bytes | None, reason: str) -> None:
    p = processor()
    out = p.handle(value, SRC, now_ns=T0)
    assert out is not None
    dead = JsonCodec(DeadLetter).decode(out)
    assert reason in dead.reason
    assert (dead.stage, dead.source_topic, dead.partition, dead.offset, dead.key) == (
        "processors.tcp_pairs",
        "p.enriched.tcp",
        1,
        42,
        "k",
    )
    assert dead.payload == ("" if value is None else value.decode())
    assert p.report()["dead_lettered"] == 1
    assert p.report()["counted"] == 0


def test_good_messages_publish_keyed_metrics_when_the_watermark_passes() -> None:
    p = processor()
    assert p.handle(encoded(T0 + S), SRC, now_ns=T0 + S) is None
    assert p.handle(encoded(T0 + 2 * S), SRC, now_ns=T0 + 2 * S) is None
    # Newest event T0+2s: the window [T0, T0+10s) closes once events or the clock reach 15 s.
    assert p.close_ready(now_ns=T0 + 14 * S) == []
    ready = p.close_ready(now_ns=T0 + 25 * S)  # idle: now - 10 s = T0 + 15 s
    assert len(ready) == 1
    key, value = ready[0]
    assert key == b"a/Deployment/web|external/10.0.0.2"
    metric = JsonCodec(TcpPairMetric).decode(value)
    assert (metric.connections, metric.bytes_client_to_server) == (2, 10)
    assert metric.window_start_ns == T0


def test_late_record_is_logged_once_per_report(caplog: pytest.LogCaptureFixture) -> None:
    p = processor()
    p.handle(encoded(T0 + S), SRC, now_ns=T0)
    p.close_ready(now_ns=T0 + 30 * S)
    with caplog.at_level(logging.WARNING, logger="processors.tcp_pairs"):
        for _ in range(3):
            assert p.handle(encoded(T0 + 2 * S), SRC, now_ns=T0 + 30 * S) is None
    assert len([r for r in caplog.records if "late record dropped" in r.message]) == 1
    report = p.report()
    assert (report["late_dropped"], report["late_since_last_report"]) == (3, 3)
    assert p.report()["late_since_last_report"] == 0


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
    assert "FLOWSCOPE_PROCESSORS_GRACE_S" in capsys.readouterr().err


def test_cli_env_defaults(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLOWSCOPE_LOG_LEVEL", "chatty")
    assert main(["worker"]) == 2
    assert "DEBUG, INFO, WARNING, ERROR" in capsys.readouterr().err
