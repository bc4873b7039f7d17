"""FLOWSCOPE_ENRICHER_BATCH_RECORDS / --batch-records: parsed at start, bad values refused."""

from __future__ import annotations

import pytest

from enricher.__main__ import build_parser, settings_from_args


def test_batch_records_from_the_environment_and_the_command_line() -> None:
    env = {"FLOWSCOPE_ENRICHER_BATCH_RECORDS": "256"}
    assert settings_from_args(build_parser(env).parse_args(["join"])).output_batch_records == 256
    args = build_parser(env).parse_args(["join", "--batch-records", "1"])
    assert settings_from_args(args).output_batch_records == 1
    assert settings_from_args(build_parser({}).parse_args(["join"])).output_batch_records == 256


@pytest.mark.parametrize("bad", ["0", "-3", "10001", "many"])
def test_an_invalid_batch_records_fails_at_start_naming_the_range(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser({"FLOWSCOPE_ENRICHER_BATCH_RECORDS": bad}).parse_args(["join"])
    err = capsys.readouterr().err
    assert "--batch-records" in err and (
        "1 (one record per message) to 10000" in err or "whole number" in err
    )
