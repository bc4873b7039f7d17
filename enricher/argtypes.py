"""The enricher's command-line value types: each parses one option's text (from the command
line or, as its default, the environment) or says what is wrong with it."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import TypeVar

from enricher.classify import Network, parse_cidrs

N = TypeVar("N", int, float)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def flag(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a boolean (valid: {', '.join(_TRUE + _FALSE[:-1])})"
    )


def positive(kind: Callable[[str], N], what: str) -> Callable[[str], N]:
    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}: {text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{what}: must be > 0, got {text!r}")
        return value

    return parse


MAX_BATCH_RECORDS = 10_000


def batch_records(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_BATCH_RECORDS:
        raise argparse.ArgumentTypeError(
            f"must be 1 (one record per message) to {MAX_BATCH_RECORDS}, got {text!r}"
        )
    return value


def port(text: str | int) -> int:
    """A TCP port, or 0 for none."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 (off) or 1-65535, got {text!r}")
    return value


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def cidrs(what: str) -> Callable[[str], tuple[Network, ...]]:
    def parse(text: str) -> tuple[Network, ...]:
        try:
            return parse_cidrs(text, what)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


# A Kubernetes annotation key: an optional DNS-subdomain prefix and "/", then a name of at
# most 63 alphanumerics, "-", "_" and ".", starting and ending alphanumeric.
_ANNOTATION_KEY = re.compile(
    r"(?:[a-z0-9]([-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)


def annotation_keys(text: str | frozenset[str]) -> frozenset[str]:
    """Comma- or space-separated annotation keys (exact keys: no patterns)."""
    if isinstance(text, frozenset):
        return text
    keys = text.replace(",", " ").split()
    for key in keys:
        prefix = key.rpartition("/")[0]
        if not _ANNOTATION_KEY.fullmatch(key) or len(prefix) > 253:
            raise argparse.ArgumentTypeError(
                f"{key!r} is not an annotation key (e.g. example.com/team or team)"
            )
    return frozenset(keys)
