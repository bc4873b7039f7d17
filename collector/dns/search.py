"""Mark search-path expansions (resolv.conf ``search`` + ``ndots``) with the asked name. Pure.

A pod's resolver (glibc, musl, Go) with ``search ns.svc.cluster.local svc.cluster.local
cluster.local`` and ``options ndots:5`` turns a lookup of ``api.example.com`` (fewer than 5
dots) into ``api.example.com.ns.svc.cluster.local``, ``...svc.cluster.local``,
``...cluster.local``, then ``api.example.com`` itself: three NXDOMAINs that are noise, not
failures. A name with at least ``ndots`` dots is tried as is first, then expanded.

Knowing the pod's search list (read from its resolv.conf by :mod:`collector.dns.resolvconf`),
the wire order identifies a sequence, as glibc's ``__res_context_search`` makes it: for ``B``
of fewer than ``ndots`` dots, ``B.<search[0]>`` opens one; ``B.<search[i]>`` in order
continues it; ``B`` itself closes it (that query is the asked name, not an expansion). For
``B`` of ``ndots`` dots or more, ``B`` is asked first and the search list follows, with no
query after it. The resolver goes on to the next candidate only after NXDOMAIN, NODATA or
SERVFAIL; any other outcome (an answer, a timeout, REFUSED...) ends the sequence. Sequences
are tracked per (cgroup, query type): glibc sends A and AAAA interleaved, as one lookup.

A name with a trailing dot is absolute and never expanded, but the dot never reaches the wire:
``B.<search[0]>.`` asked as is sends exactly the query of ``B``'s first expansion. Only what
follows tells them apart: an expansion that failed is followed by the next candidate, an
absolute name is not. So the failed answer (NXDOMAIN, NODATA, SERVFAIL) of a sequence's
opening query is held (:meth:`SearchTracker.settle`) until the next candidate confirms it as
an expansion, or for ``hold_s`` after which it is released as the asked name itself
(``not_continued``). An opening query that is answered, or times out, ends the lookup either
way; the two readings cannot be told apart and it stays marked as the expansion, the common
case in a cluster (``web`` found as ``web.<namespace>.svc.cluster.local``).

Both pipeline paths settle through :meth:`SearchTracker.settle_outcome`, with a light
summary of the result and the thing to hold: the reference path holds its QueryResult, the
compiled one the record it already encoded. :meth:`SearchTracker.release` hands each back with
the mark it ends with, so only the few re-marked ones are rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from collector.dns.matcher import QueryResult

NOERROR, SERVFAIL, NXDOMAIN = 0, 2, 3
A, AAAA = 1, 28
# glibc asks A and AAAA as one lookup (T_QUERY_A_AND_AAAA): an answer to either ends both.
_TWIN = {A: AAAA, AAAA: A}


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
NOT_EXPANDED = Mark(False, None)  # held, nothing followed: the asked name itself


class Released(NamedTuple):
    """A held result handed back, decided."""

    held: object  # what settle_outcome was given to hold
    mark: Mark | None  # the mark it ends with; None: the one it was settled with


class _Held(NamedTuple):
    held: object
    expansion: bool | None  # as settled (counted as an expansion once confirmed)


Client = tuple[int, int]  # cgroup id, query type


@dataclass(eq=False)
class _Sequence:
    client: Client
    base: str
    next_index: int  # which search domain the next expansion uses
    last_ns: int
    last_name: str  # the sequence's latest query, whose outcome decides whether it goes on
    # Opened by B.<search[0]>, nothing after it yet: maybe an absolute name asked as is.
    tentative: bool
    as_is_first: bool = False  # B of ndots dots or more: asked first, no closing query
    held: list[_Held] = field(default_factory=list)
    hold_until_ns: int = 0


@dataclass
class SearchStats:
    expansions: int = 0  # results handed on marked as expansions
    sequences_closed: int = 0  # the as-is query after the expansions was seen
    unknown_config: int = 0  # queries from clients whose resolv.conf could not be read
    held: int = 0  # failed opening queries held to see whether the resolver goes on
    not_continued: int = 0  # held, nothing followed: the name was asked as is (absolute)
    unsettled: int = 0  # still held at shutdown: released with the mark unknown


class SearchTracker:
    """``mark(cgroup_id, qtype, name, now_ns)`` for each new client query, in wire order;
    ``settle(result)`` (or ``settle_outcome``) for each client result before it is handed on,
    and :meth:`release` now and then for the held results that are decided."""

    def __init__(
        self,
        config_of: Callable[[int], SearchConfig | None],
        sequence_ttl_s: float = 30.0,
        max_sequences_per_client: int = 64,
        hold_s: float = 5.0,
    ) -> None:
        """``config_of``: cgroup id -> that client's resolver configuration (None: unknown).
        ``hold_s``: how long a failed opening query waits for the next candidate. The
        resolver sends it as soon as the answers of this candidate are in (A and AAAA
        both); the DNS query timeout covers a sibling that is still being waited for."""
        self._config_of = config_of
        self._ttl_ns = int(sequence_ttl_s * 1e9)
        self._max = max_sequences_per_client
        self._hold_ns = int(hold_s * 1e9)
        self._open: dict[Client, list[_Sequence]] = {}
        self._holding: list[_Sequence] = []
        self._ready: list[Released] = []
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
        sequences = self._open.get(client, [])
        for seq in [s for s in sequences if now_ns - s.last_ns > self._ttl_ns]:
            self._drop(seq, confirmed=False)
        mark = self._continue(sequences, config.search, lname, now_ns)
        if mark is None:
            mark = self._start(client, sequences, config, lname, now_ns)
        for seq in sequences[: -self._max]:
            self._drop(seq, confirmed=False)
        if sequences:
            self._open[client] = sequences
        else:
            self._open.pop(client, None)
        return mark

    def _continue(
        self, sequences: list[_Sequence], search: tuple[str, ...], lname: str, now_ns: int
    ) -> Mark | None:
        for seq in reversed(sequences):
            if seq.next_index < len(search) and lname == f"{seq.base}.{search[seq.next_index]}":
                seq.next_index += 1
                seq.last_ns = now_ns
                seq.last_name = lname
                self._confirm(seq)
                return Mark(True, seq.base)
            if lname == seq.base and not seq.as_is_first:
                self._confirm(seq)
                sequences.remove(seq)
                self.stats.sequences_closed += 1
                return Mark(False, seq.base)
        return None

    def _start(
        self,
        client: Client,
        sequences: list[_Sequence],
        config: SearchConfig,
        lname: str,
        now_ns: int,
    ) -> Mark:
        mark = PLAIN
        old = list(sequences)
        bases: set[str] = set()
        suffix = "." + config.search[0]
        if lname.endswith(suffix) and len(lname) > len(suffix):
            base = lname[: -len(suffix)]
            # A base of ndots dots or more is asked as is before any expansion (glibc; musl
            # never expands it): with no sequence open for it, this is not its expansion.
            if base.count(".") < config.ndots:
                bases.add(base)
                mark = Mark(True, base)
                sequences.append(_Sequence(client, base, 1, now_ns, lname, tentative=True))
        if lname.count(".") >= config.ndots:
            # Asked as is first; its expansions may follow. Also the case when it is
            # B.<search[0]> too: the next query tells which of the two lookups it was.
            bases.add(lname)
            sequences.append(
                _Sequence(client, lname, 0, now_ns, lname, tentative=False, as_is_first=True)
            )
        for seq in old:
            if seq.base in bases:
                self._drop(seq, confirmed=False)  # a new lookup of it: the old one went no further
        return mark

    def settle(self, result: QueryResult) -> bool:
        """Take a client result's outcome into account. True: the tracker holds it (a failed
        opening query), to be handed on by :meth:`release`."""
        question = result.question
        if question is None:
            return False
        message, query, response = result.message, result.query, result.response
        end = response.mono_ns if response is not None else 0
        return self.settle_outcome(
            query.cgroup_id,
            question.qtype,
            question.name,
            message.rcode if message is not None else None,
            message.header.ancount if message is not None else 0,
            result.expansion,
            result.asked_name,
            max(end, query.mono_ns),
            result,
        )

    def settle_outcome(
        self,
        cgroup_id: int,
        qtype: int,
        name: str,
        rcode: int | None,
        answers: int,
        expansion: bool | None,
        asked_name: str | None,
        end_ns: int,
        held: object,
    ) -> bool:
        """:meth:`settle` from a summary of a client result that has a question: ``rcode``
        of its parsed response (None: timed out or malformed), ``answers`` its answer count,
        the mark it was given, ``end_ns`` its response's kernel time (else its query's).
        True: the tracker holds ``held`` until :meth:`release` hands it back."""
        lname = name.lower().rstrip(".")
        mine = [s for s in self._open.get((cgroup_id, qtype), ()) if s.last_name == lname]
        if not _resolver_goes_on(rcode, answers):
            # The resolver is done with this lookup; an answer ends its A/AAAA twin too.
            twin = _TWIN.get(qtype)
            if twin is not None and rcode == NOERROR and answers > 0:
                bases = {s.base for s in mine}
                mine += [s for s in self._open.get((cgroup_id, twin), ()) if s.base in bases]
            for seq in mine:
                self._drop(seq, confirmed=True)
        elif expansion:
            opener = next((s for s in mine if s.tentative and s.base == asked_name), None)
            if opener is not None:
                if not opener.held:
                    opener.hold_until_ns = end_ns + self._hold_ns
                    self._holding.append(opener)
                opener.held.append(_Held(held, expansion))
                self.stats.held += 1
                return True
        if expansion:
            self.stats.expansions += 1
        return False

    def release(self, now_ns: int) -> list[Released]:
        """Held results now decided: confirmed by the next candidate, or held past ``hold_s``
        with nothing after them (then the asked name itself)."""
        for seq in [s for s in self._holding if s.hold_until_ns <= now_ns]:
            self._drop(seq, confirmed=False)
        ready, self._ready = self._ready, []
        return ready

    def flush(self) -> list[Released]:
        """At shutdown: every held result, with the mark unknown (its wait was cut short)."""
        for seq in list(self._holding):
            self.stats.unsettled += len(seq.held)
            self._ready += [Released(h.held, UNKNOWN) for h in seq.held]
            seq.held = []
            self._holding.remove(seq)
            self._drop(seq, confirmed=True)
        return self.release(0)

    def _confirm(self, seq: _Sequence) -> None:
        seq.tentative = False
        if seq.held:
            self.stats.expansions += sum(h.expansion is True for h in seq.held)
            self._ready += [Released(h.held, None) for h in seq.held]
            seq.held = []
            self._holding.remove(seq)

    def _drop(self, seq: _Sequence, *, confirmed: bool) -> None:
        """Forget a sequence. Its held results are handed on: as they are when ``confirmed``,
        else as the asked names they turned out to be."""
        sequences = self._open.get(seq.client)
        if sequences is not None and seq in sequences:
            sequences.remove(seq)
            if not sequences:
                del self._open[seq.client]
        if not seq.held:
            return
        if confirmed:
            self._confirm(seq)
            return
        self.stats.not_continued += len(seq.held)
        self._ready += [Released(h.held, NOT_EXPANDED) for h in seq.held]
        seq.held = []
        self._holding.remove(seq)

    def forget_idle(self, now_ns: int) -> None:
        """Drop sequences idle for longer than the TTL (call now and then)."""
        for sequences in list(self._open.values()):
            for seq in [s for s in sequences if now_ns - s.last_ns > self._ttl_ns]:
                self._drop(seq, confirmed=False)


def _resolver_goes_on(rcode: int | None, answers: int) -> bool:
    """Would glibc try the next candidate after this outcome? NXDOMAIN, NODATA (NOERROR, no
    answer) and SERVFAIL: yes; an answer, a timeout, a malformed reply (``rcode`` None),
    REFUSED: no."""
    if rcode == NOERROR:
        return answers == 0
    return rcode in (NXDOMAIN, SERVFAIL)
