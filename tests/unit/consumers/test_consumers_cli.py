"""The installed ``flowscope`` command: every component behind one name, each subcommand's
--help stating every setting with its environment variable."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from collector.settings import ENV as COLLECTOR_ENV
from enricher.__main__ import ENV as ENRICHER_ENV
from flowscope.cli import COMMANDS

FLOWSCOPE = Path(sys.executable).parent / "flowscope"  # the [project.scripts] entry
READERS = ["tail", "top", "exporter", "alerts", "sink"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FLOWSCOPE), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_the_command_lists_every_subcommand() -> None:
    done = _run("--help")
    assert done.returncode == 0, done.stderr
    for name in COMMANDS:
        assert re.search(rf"^  {name}\s", done.stdout, re.M), done.stdout


def test_an_unknown_subcommand_names_the_valid_ones() -> None:
    done = _run("frobnicate")
    assert done.returncode == 2
    assert "valid: collector, enricher" in done.stderr


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_collector_help_states_every_env_variable() -> None:
    done = _run("collector", "--help")
    assert done.returncode == 0, done.stderr
    missing = [v for v in COLLECTOR_ENV.values() if v not in _flat(done.stdout)]
    assert not missing, missing


def test_enricher_help_states_every_env_variable_over_its_subcommands() -> None:
    text = "".join(_run("enricher", sub, "--help").stdout for sub in ("publish", "join"))
    missing = [v for v in ENRICHER_ENV.values() if v not in _flat(text)]
    assert not missing, missing


@pytest.mark.parametrize("command", READERS)
def test_every_option_of_the_readers_is_in_help_with_env_and_default(command: str) -> None:
    module = importlib.import_module(COMMANDS[command].target.partition(":")[0])
    done = _run(command, "--help")
    assert done.returncode == 0, done.stderr
    text = _flat(done.stdout)
    for option in module.OPTIONS:
        assert option.flag in text, option
        assert f"default {option.default!r}" in text, option
        if option.env:
            assert option.env in text, option


def test_processors_help_reaches_the_worker_settings() -> None:
    done = _run("processors", "worker", "--help")
    assert done.returncode == 0, done.stderr
    assert "FLOWSCOPE_PROCESSORS_WINDOW_SECONDS" in _flat(done.stdout)


def test_python_dash_m_keeps_working() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "collector", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "FLOWSCOPE_NODE_NAME" in done.stdout


def test_every_published_topic_can_be_read_decoded() -> None:
    from consumers.catalog import RECORD_TYPES
    from schemas import generate

    assert {p.topic_suffix for p in generate.PUBLISHED} <= set(RECORD_TYPES)
