"""Settings of the ``consumers`` commands, each declared once: its flag, its environment
variable, its default and its meaning. The same declaration builds the argparse option, the
``--help`` line (with env and default) and the value, so they cannot drift apart."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    name: str  # the settings field and, with '-' for '_', the flag
    env: str | None
    default: str  # as it would be written in the environment
    help: str
    parse: Callable[[str], Any] = str
    choices: Sequence[str] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


BOOTSTRAP = Option("bootstrap_servers", "FLOWSCOPE_BOOTSTRAP_SERVERS", "127.0.0.1:9092",
                   "Kafka bootstrap servers, host:port[,host:port]")  # fmt: skip
PREFIX = Option("topic_prefix", "FLOWSCOPE_TOPIC_PREFIX", "flowscope",
                "prefix of every topic name")  # fmt: skip


def _typed(option: Option) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return option.parse(text)
        except ValueError as exc:
            where = f" (from {option.flag} or {option.env})" if option.env else ""
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}{where}") from None

    return parse


def add_options(
    parser: argparse.ArgumentParser, options: Sequence[Option], env: Mapping[str, str]
) -> None:
    for o in options:
        source = f"env {o.env}; " if o.env else ""
        parser.add_argument(
            o.flag,
            dest=o.name,
            default=env.get(o.env, o.default) if o.env else o.default,
            type=_typed(o),
            choices=o.choices,
            # argparse applies `type` to string defaults too: env values are checked as well.
            help=f"{o.help} ({source}default {o.default!r})".replace("%", "%%"),
        )


def positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise ValueError("must be > 0")
        return value

    return parse


def non_negative(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value < 0:
            raise ValueError("must be >= 0")
        return value

    return parse
