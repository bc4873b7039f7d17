"""Mark search-path expansions (resolv.conf ``search`` + ``ndots``) with the asked name. Pure.

A pod's resolver (glibc, musl, Go) with ``search ns.svc.cluster.local svc.cluster.local
cluster.local`` and ``options ndots:5`` turns a lookup of ``api.example.com`` (fewer than 5
dots) into ``api.example.com.ns.svc.cluster.local``, ``...svc.cluster.local``,
``...cluster.local``, then ``api.example.com`` itself: three NXDOMAINs that are noise, not
failures. A name with at least ``ndots`` dots is tried as is first, then expanded.

Knowing the pod's search list (read from its resolv.conf by :mod:`collector.dns.resolvconf`),
the wire order identifies a sequence: ``B.<search[0]>`` opens one for ``B``; then
``B.<search[i]>`` in order continues it; ``B`` itself closes it (that query is the asked name,
not an expansion). Sequences are tracked per (cgroup, query type): glibc sends A and AAAA
interleaved. Limits: an application asking for the absolute name ``B.<search[0]>.`` looks
exactly like an expansion of ``B`` on the wire and is marked as one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple


class SearchConfig(NamedTuple):
    search: tuple[str, ...]  # lower-case, no trailing dot
    ndots: int
    nameservers: tuple[str, ...] = ()


def parse_resolv_conf(text: str) -> SearchConfig:
    """The parts of resolv.conf(5) that shape queries. The last search/domain line wins."""
    search: tuple[str, ...] = ()
    ndots = 1
    servers: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        word, *rest = line.split()
        if word == "nameserver" and rest:
            servers.append(rest[0])
        elif word in ("search", "domain"):
            search = tuple(d.lower().rstrip(".") for d in rest if d.strip("."))
        elif word == "options":
            for option in rest:
                if option.startswith("ndots:"):
                    try:
                        # glibc caps ndots at 15 (RES_MAXNDOTS).
                        ndots = max(0, min(15, int(option[6:])))
                    except ValueError:
                        continue
    return SearchConfig(search, ndots, tuple(servers))


class Mark(NamedTuple):
    expansion: bool | None  # None: unknown (no search configuration for this client)
    asked_name: str | None  # the name the application asked for, when known


UNKNOWN = Mark(None, None)
PLAIN = Mark(False, None)


@dataclass
class _Sequence:
    base: str
    next_index: int  # which search domain the next expansion uses
    last_ns: int


@dataclass
class SearchStats:
    expansions: int = 0
    sequences_closed: int = 0  # the as-is query after the expansions was seen
    unknown_config: int = 0  # queries from clients whose resolv.conf could not be read


class SearchTracker:
    """``mark(cgroup_id, qtype, name, now_ns)`` for each new client query, in wire order."""

    def __init__(
        self,
        config_of: Callable[[int], SearchConfig | None],
        sequence_ttl_s: float = 30.0,
        max_sequences_per_client: int = 64,
    ) -> None:
        """``config_of``: cgroup id -> that client's resolver configuration (None: unknown)."""
        self._config_of = config_of
        self._ttl_ns = int(sequence_ttl_s * 1e9)
        self._max = max_sequences_per_client
        self._open: dict[tuple[int, int], list[_Sequence]] = {}
        self.stats = SearchStats()

    def mark(self, cgroup_id: int, qtype: int, name: str, now_ns: int) -> Mark:
        config = self._config_of(cgroup_id)
        if config is None:
            self.stats.unknown_config += 1
            return UNKNOWN
        if not config.search:
            return PLAIN
        lname = name.lower().rstrip(".")
        client = (cgroup_id, qtype)
        sequences = [s for s in self._open.get(client, ()) if now_ns - s.last_ns <= self._ttl_ns]
        mark = self._continue(sequences, config.search, lname, now_ns)
        if mark is None:
            mark = self._start(sequences, config.search, lname, now_ns)
        if sequences:
            self._open[client] = sequences[-self._max :]
        else:
            self._open.pop(client, None)
        if mark.expansion:
            self.stats.expansions += 1
        return mark

    def _continue(
        self, sequences: list[_Sequence], search: tuple[str, ...], lname: str, now_ns: int
    ) -> Mark | None:
        for seq in reversed(sequences):
            if seq.next_index < len(search) and lname == f"{seq.base}.{search[seq.next_index]}":
                seq.next_index += 1
                seq.last_ns = now_ns
                return Mark(True, seq.base)
            if lname == seq.base:
                sequences.remove(seq)
                self.stats.sequences_closed += 1
                return Mark(False, seq.base)
        return None

    @staticmethod
    def _start(
        sequences: list[_Sequence], search: tuple[str, ...], lname: str, now_ns: int
    ) -> Mark:
        suffix = "." + search[0]
        if lname.endswith(suffix) and len(lname) > len(suffix):
            base = lname[: -len(suffix)]
            sequences[:] = [s for s in sequences if s.base != base]
            sequences.append(_Sequence(base, 1, now_ns))
            return Mark(True, base)
        return PLAIN

    def forget_idle(self, now_ns: int) -> None:
        """Drop sequences idle for longer than the TTL (call now and then)."""
        for client in list(self._open):
            alive = [s for s in self._open[client] if now_ns - s.last_ns <= self._ttl_ns]
            if alive:
                self._open[client] = alive
            else:
                del self._open[client]
