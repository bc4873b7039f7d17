"""Settings: CLI over FLOWSCOPE_* environment over defaults; bad values fail at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.settings import ENV, Settings, SettingsError, build_parser, parse_settings
from flowscope.kafka_security import ENV as SECURITY_ENV


@pytest.fixture
def cgroup_root(tmp_path: Path) -> Path:
    (tmp_path / "cgroup.controllers").write_text("")
    return tmp_path


def test_environment_then_command_line(cgroup_root: Path) -> None:
    env = {
        "FLOWSCOPE_BOOTSTRAP_SERVERS": "kafka:9092",
        "FLOWSCOPE_TOPIC_PREFIX": "envprefix",
        "FLOWSCOPE_NODE_NAME": "node-a",
        "FLOWSCOPE_CGROUP_ROOT": str(cgroup_root),
        "FLOWSCOPE_COLLECTOR_RINGBUF_BYTES": "1048576",
        "FLOWSCOPE_COLLECTOR_MOUNT_TRACEFS": "false",
        "FLOWSCOPE_COLLECTOR_KAFKA_OPTIONS": "linger.ms=5; compression.type=zstd",
    }
    s = parse_settings(["--topic-prefix", "cli", "--kafka-option", "linger.ms=50"], env)
    assert s.bootstrap_servers == "kafka:9092"
    assert s.topic_prefix == "cli"
    assert s.topics.raw_tcp == "cli.raw.tcp"
    assert s.node_name == "node-a"
    assert s.cgroup_root == cgroup_root
    assert s.ringbuf_bytes == 1 << 20
    assert s.mount_tracefs is False
    assert dict(s.kafka_options) == {"linger.ms": "50", "compression.type": "zstd"}


def test_defaults(cgroup_root: Path) -> None:
    s = parse_settings(["--cgroup-root", str(cgroup_root)], {})
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert s.topics.raw_tcp == "flowscope.raw.tcp"
    assert s.ringbuf_bytes == 4 << 20
    assert s.bpf_object.name == "tcpconn.bpf.o"
    assert s.mount_tracefs is True
    assert dict(s.kafka_options) == {"linger.ms": "100"}  # the collector's own default
    assert (s.batch_records, s.batch_bytes) == (256, 256 << 10)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ringbuf-bytes", "3000"], "power of 2"),
        (["--poll-interval-seconds", "0"], "poll_interval_s"),
        (["--max-batch", "-1"], "max_batch"),
        (["--kafka-option", "novalue"], "KEY=VALUE"),
        (["--batch-records", "0"], "batch_records"),
        (["--batch-bytes", "2000000"], "batch_bytes"),
    ],
)
def test_invalid_values_fail_naming_the_setting(
    cgroup_root: Path, argv: list[str], message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        parse_settings(["--cgroup-root", str(cgroup_root), *argv], {})


def test_a_directory_that_is_not_cgroup_v2_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="not a cgroup v2 mount"):
        parse_settings(["--cgroup-root", str(tmp_path)], {})


def test_bad_environment_value_exits_with_usage(
    cgroup_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_settings(
            ["--cgroup-root", str(cgroup_root)], {"FLOWSCOPE_COLLECTOR_MOUNT_TRACEFS": "maybe"}
        )
    assert "true/false" in capsys.readouterr().err


def test_kafka_options_are_a_read_only_copy(cgroup_root: Path) -> None:
    s = parse_settings(["--cgroup-root", str(cgroup_root), "--kafka-option", "acks=1"], {})
    with pytest.raises(TypeError):
        s.kafka_options["acks"] = "all"  # type: ignore[index]


def test_help_documents_every_setting_and_its_variable() -> None:
    text = build_parser({}).format_help()
    for name, variable in ENV.items():
        option = "--kafka-option" if name == "kafka_options" else "--" + name.replace("_", "-")
        assert variable in text, variable
        assert option in text, option
    # no setting without a variable; the nested DNS group has its own (test_dns_pipeline.py),
    # and so has the Kafka security group (flowscope.kafka_security.ENV, shared by every service)
    assert set(ENV) == set(Settings.__dataclass_fields__) - {"dns", "kafka_security"}
    for variable in SECURITY_ENV.values():
        assert variable in text, variable


def test_pins_off_by_default_and_per_node_when_set(cgroup_root: Path) -> None:
    base = ["--cgroup-root", str(cgroup_root), "--node-name", "n1"]
    assert parse_settings(base, {}).tcp_pin_dir is None
    assert parse_settings(base, {"FLOWSCOPE_COLLECTOR_PIN_ROOT": ""}).tcp_pin_dir is None
    s = parse_settings(base, {"FLOWSCOPE_COLLECTOR_PIN_ROOT": "/sys/fs/bpf/fs"})
    assert s.tcp_pin_dir == Path("/sys/fs/bpf/fs/n1/tcpconn")
    assert s.uninstall is False
    assert parse_settings([*base, "--pin-root", "/x", "--uninstall"], {}).uninstall is True
