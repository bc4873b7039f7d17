"""What a person filters on, whatever the record type: ``namespace``, ``workload`` and
``outcome`` are gathered from every field that means them (both ends of a connection, a
metric's client and server workloads, an alert's affected workloads, the service pairs that
used a network path), and any other top-level field of the record (``role``, ``rule``,
``peer_class`` ...) can be named as it is encoded.

Expression: terms separated by spaces or ``and``, all of which must hold:
``FIELD=V1,V2`` (one of the values), ``FIELD!=V`` (none of them), ``FIELD~TEXT`` (a value
contains TEXT). ``namespace=shop outcome!=closed`` shows shop's failed connections.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from flowscope.records import Endpoint

_TERM = re.compile(r"^([A-Za-z_][\w.]*)(!=|=|~)(.*)$")
FACETS = ("namespace", "workload", "outcome")


class FilterError(ValueError):
    pass


def _strs(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple, set)):
        for v in value:
            if isinstance(v, str):
                yield v


def facets(record: Any) -> dict[str, set[str]]:
    """namespace / workload / outcome values of one decoded record."""
    found: dict[str, set[str]] = {f: set() for f in FACETS}
    if not isinstance(record, msgspec.Struct):
        return found
    for name in record.__struct_fields__:
        value = getattr(record, name)
        if isinstance(value, Endpoint):
            if value.namespace:
                found["namespace"].add(value.namespace)
            found["workload"].add(value.workload_key())
        elif name == "namespace" or name.endswith("_namespace"):
            found["namespace"].update(_strs(value))
        elif name.endswith("_workload") or name.endswith("_workloads"):
            found["workload"].update(_strs(value))
        elif name in ("outcome", "status"):
            found["outcome"].update(_strs(value))
        elif name == "services":  # a path's "client -> server" workload pairs
            found["workload"].update(e for pair in _strs(value) for e in pair.split(" -> "))
        elif name in ("outcomes", "failures") and isinstance(value, dict):
            found["outcome"].update(k for k, n in value.items() if n)
    # A workload key is namespace/kind/name: its namespace counts even where the record
    # carries none of its own (metric records of workloads the enricher named).
    for key in found["workload"]:
        ns, sep, _ = key.partition("/")
        if sep and key.count("/") == 2:
            found["namespace"].add(ns)
    return found


def _field_values(record: Any, field: str) -> set[str]:
    if field in FACETS:
        return facets(record)[field]
    if isinstance(record, msgspec.Struct):
        value = getattr(record, field, None)
    elif isinstance(record, dict):
        value = record.get(field)
    else:
        value = None
    if value is None or isinstance(value, (dict, msgspec.Struct)):
        return set()
    if isinstance(value, list):
        return {str(v) for v in value}
    return {str(value).lower() if isinstance(value, bool) else str(value)}


@dataclass(frozen=True)
class Term:
    field: str
    op: str
    values: tuple[str, ...]

    def holds(self, record: Any) -> bool:
        have = _field_values(record, self.field)
        if self.op == "=":
            return any(v in have for v in self.values)
        if self.op == "!=":
            return not any(v in have for v in self.values)
        return any(v in h for h in have for v in self.values)


@dataclass(frozen=True)
class Filter:
    terms: tuple[Term, ...] = ()

    def matches(self, record: Any) -> bool:
        return all(t.holds(record) for t in self.terms)


def parse_filter(text: str) -> Filter:
    terms = []
    for word in text.split():
        if word.lower() == "and":
            continue
        m = _TERM.match(word)
        if m is None or not m.group(3):
            raise FilterError(
                f"{word!r}: expected FIELD=VALUE, FIELD!=VALUE or FIELD~TEXT (fields: "
                f"{', '.join(FACETS)} or any top-level field of the record)"
            )
        terms.append(Term(m.group(1), m.group(2), tuple(m.group(3).split(","))))
    return Filter(tuple(terms))
