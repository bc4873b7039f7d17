"""The declaration layer: one field gives the option, the variable, the check and the help."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from flowscope import settings
from flowscope.settings import group, non_negative, optional_path, positive, setting


class BadSetting(ValueError):
    pass


@dataclass(frozen=True)
class Inner:
    port: int = setting(53, "a port", env="X_INNER_PORT")
    timeout_s: float = setting(5.0, "a wait", env="X_INNER_TIMEOUT_SECONDS", check=positive)

    def __post_init__(self) -> None:
        settings.check(self, BadSetting)


@dataclass(frozen=True)
class Example:
    name: str = setting("a", "a name", env="X_NAME")
    interval_s: float = setting(1.0, "an interval", env="X_INTERVAL_SECONDS", check=non_negative)
    enabled: bool = setting(False, "a switch", env="X_ENABLED")
    path: Path | None = setting(None, "a path", env="X_PATH", parse=optional_path)
    items: tuple[str, ...] = setting(
        (), "items", env="X_ITEMS", flag="--item", repeat=";", parse=tuple, factory=tuple
    )
    token: str = setting("", "a secret", env="X_TOKEN", secret=True)
    hidden: str = setting("", "environment only", env="X_HIDDEN", flag="")
    only_b: int = setting(3, "for b", env="X_ONLY_B", commands=("b",))
    inner: Inner = group(Inner, prefix="inner", title="Inner")
    derived: int = 0  # not a setting

    def __post_init__(self) -> None:
        settings.check(self, BadSetting)


def parse(argv: list[str], env: dict[str, str], command: str | None = None) -> Example:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, Example, env, command=command)
    built: Example = settings.from_args(Example, parser.parse_args(argv), derived=7)
    return built


def test_flags_and_variables_come_from_the_fields() -> None:
    flags = {i.name: i.flag for i in settings.items(Example)}
    assert flags["interval_s"] == "--interval-seconds"  # the unit spelled out
    assert flags["timeout_s"] == "--inner-timeout-seconds"  # the group's prefix
    assert flags["items"] == "--item"
    assert flags["hidden"] == ""
    assert "derived" not in flags
    assert settings.env_names(Example)["interval_s"] == "X_INTERVAL_SECONDS"
    assert settings.env_names(Example, nested=True)["inner_port"] == "X_INNER_PORT"


def test_option_over_variable_over_default() -> None:
    assert parse([], {}) == Example(derived=7)
    env = {
        "X_NAME": "env",
        "X_INTERVAL_SECONDS": "2.5",
        "X_ENABLED": "yes",
        "X_PATH": "/p",
        "X_INNER_PORT": "5353",
        "X_ITEMS": "a;b",
        "X_HIDDEN": "h",
    }
    s = parse([], env)
    assert (s.name, s.interval_s, s.enabled, s.path) == ("env", 2.5, True, Path("/p"))
    assert (s.inner.port, s.items, s.hidden, s.derived) == (5353, ("a", "b"), "h", 7)
    s = parse(["--name", "cli", "--enabled", "false", "--inner-port", "1", "--item", "c"], env)
    assert (s.name, s.enabled, s.inner.port, s.items) == ("cli", False, 1, ("a", "b", "c"))
    assert parse(["--enabled"], {}).enabled is True


def test_a_bad_text_stops_the_parser_naming_the_option_and_the_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse([], {"X_INTERVAL_SECONDS": "soon"})
    err = capsys.readouterr().err
    assert "'soon' is not a number" in err
    assert "--interval-seconds" in err and "X_INTERVAL_SECONDS" in err
    with pytest.raises(SystemExit):
        parse(["--enabled", "maybe"], {})
    assert "true/false" in capsys.readouterr().err


def test_a_bad_value_fails_the_check_naming_the_field() -> None:
    with pytest.raises(BadSetting, match="interval_s: must be >= 0"):
        parse(["--interval-seconds", "-1"], {})
    with pytest.raises(BadSetting, match="timeout_s: must be > 0"):
        parse([], {"X_INNER_TIMEOUT_SECONDS": "0"})
    with pytest.raises(BadSetting, match="interval_s"):
        Example(interval_s=-2.0)


def test_subcommands_take_only_their_settings() -> None:
    assert parse([], {"X_ONLY_B": "9"}, command="b").only_b == 9
    with pytest.raises(SystemExit):
        parse(["--only-b", "9"], {}, command="a")
    assert parse([], {"X_ONLY_B": "9"}, command="a").only_b == 3


def test_help_names_variable_and_default_but_never_a_secret() -> None:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, Example, {"X_TOKEN": "s3cret", "X_HIDDEN": "h1dden"})
    text = " ".join(parser.format_help().split())
    assert "an interval (env X_INTERVAL_SECONDS; default 1.0)" in text
    assert "X_TOKEN" in text and "s3cret" not in text and "default (secret)" in text
    assert "--hidden" not in text and "h1dden" not in text
    assert "s3cret" not in repr(parse([], {"X_TOKEN": "s3cret"}))


def test_the_reference_has_a_row_per_setting() -> None:
    text = settings.reference([settings.Section("Example", "example", Example)], "# Intro")
    rows = [
        line for line in text.splitlines() if line.startswith("| `--") or "environment only" in line
    ]
    assert len(rows) == len(list(settings.items(Example)))
    assert "| `--interval-seconds` | `X_INTERVAL_SECONDS` | `1.0` | an interval |" in text
    assert "| `--inner-port` | `X_INNER_PORT` | `53` | a port |" in text
