"""Settings of the ``consumers`` commands, each declared once: its flag, its environment
variable, its default and its meaning. The same declaration builds the argparse option, the
``--help`` line (with env and default), the value and its rows in docs/settings.md, so they
cannot drift apart. The settings every command shares come from flowscope.settings."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flowscope import settings


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


def _shared(name: str, declaration: Any, **extra: Any) -> Option:
    spec: settings.Spec = declaration.metadata[settings.SPEC]
    return Option(name, spec.env, str(declaration.default), spec.help, **extra)


BOOTSTRAP = _shared("bootstrap_servers", settings.bootstrap_servers())
PREFIX = _shared("topic_prefix", settings.topic_prefix())
LOG_LEVEL = _shared("log_level", settings.log_level(), parse=str.upper, choices=settings.LOG_LEVELS)


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


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The options, with logging set to --log-level."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    return args


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
