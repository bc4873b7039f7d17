"""Match DNS responses to their queries, per observing socket, with timeouts. Pure.

Every DNS exchange between two pods of this node is seen four times: the client's socket
sends the query (egress) and receives the response (ingress); the server's socket receives
the query and sends the response. Each socket's pair becomes one :class:`QueryResult`, with
``role`` client or server, so both ends are attributed by their own cgroup.

Keys. A client's query and response are matched on (cgroup, transport, local port,
transaction id, question); the remote address is left out on purpose: egress packets have
been through Service DNAT (the query goes to a pod IP) while ingress ones have been
un-NATed (the response comes from the ClusterIP). A server's adds the client's address and
port: many clients reuse ids. Identical query packets while one is pending are
retransmissions (``attempts``); latency counts from the first.

A query pending longer than ``timeout_s`` (kernel clock) becomes a ``timeout`` result. A
response whose question differs from the pending query's is not a match (spoofed or
broken) and is counted; a malformed response is matched by id alone when the socket has
exactly one query pending with that id, giving a ``malformed`` result.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from collector.dns.abi import DnsPacket
from collector.dns.parser import DnsParseError, Message, Question

Outcome = Literal["answered", "timeout", "malformed"]
Role = Literal["client", "server"]

# (cgroup, role, transport, local port, remote addr, remote port, txid); remote only for
# servers (None, 0 for clients).
Prefix = tuple[int, Role, str, int, str | None, int, int]
QKey = tuple[str, int, int]  # lower-cased name, type, class
# How many keys of timed-out queries are remembered, to tell late responses from strays.
EXPIRED_MEMORY = 16384


class QueryResult(NamedTuple):
    role: Role
    query: DnsPacket  # the first packet of the query
    txid: int
    question: Question | None  # None: the query itself was malformed
    attempts: int
    outcome: Outcome
    response: DnsPacket | None
    message: Message | None  # the parsed response
    malformed_reason: str | None
    # Set by collector.dns.search for clients: was this query a search-path expansion, and
    # of which name. None: unknown.
    expansion: bool | None = None
    asked_name: str | None = None

    @property
    def latency_ns(self) -> int | None:
        if self.response is None:
            return None
        return max(0, self.response.mono_ns - self.query.mono_ns)


@dataclass
class _Pending:
    packet: DnsPacket
    question: Question
    deadline_ns: int
    attempts: int = 1
    expansion: bool | None = None
    asked_name: str | None = None


@dataclass
class MatcherStats:
    queries: int = 0  # distinct queries seen (retransmissions not included)
    retransmissions: int = 0
    answered: int = 0
    timeouts: int = 0
    malformed: int = 0  # results with outcome malformed (query or response)
    unmatched_responses: int = 0  # no pending query (e.g. the query was lost or pre-start)
    late_responses: int = 0  # arrived after the query had timed out
    question_mismatches: int = 0  # same id, another question: not taken as the answer
    evicted: int = 0  # pending table full: the oldest query was dropped without a result
    malformed_packets: int = 0  # not even a header: nothing to attribute it to
    reasons: dict[str, int] = field(default_factory=dict)  # parse failures by reason


def _qkey(q: Question) -> QKey:
    return (q.name.lower(), q.qtype, q.qclass)


class Matcher:
    """Feed packets with :meth:`observe`; results come back from it and from :meth:`expire`."""

    def __init__(self, timeout_s: float = 5.0, max_pending: int = 65536) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self._timeout_ns = int(timeout_s * 1e9)
        self._max_pending = max_pending
        # Insertion order is first-seen order, which is deadline order (one timeout for all).
        self._pending: OrderedDict[tuple[Prefix, QKey], _Pending] = OrderedDict()
        self._by_prefix: dict[Prefix, list[QKey]] = {}
        self._expired: OrderedDict[tuple[Prefix, QKey], None] = OrderedDict()
        self.stats = MatcherStats()

    def __len__(self) -> int:
        return len(self._pending)

    @staticmethod
    def prefix(packet: DnsPacket, role: Role, txid: int) -> Prefix:
        local_port = packet.local[1]
        if role == "client":
            return (packet.cgroup_id, role, packet.transport, local_port, None, 0, txid)
        remote_addr, remote_port = packet.remote
        return (
            packet.cgroup_id,
            role,
            packet.transport,
            local_port,
            remote_addr,
            remote_port,
            txid,
        )

    def observe(
        self, packet: DnsPacket, parsed: Message | DnsParseError
    ) -> tuple[list[QueryResult], _Pending | None]:
        """Results completed by this packet, and the new pending query it opened (if any),
        so that the caller can mark it (search expansion) before it completes."""
        if isinstance(parsed, DnsParseError):
            self.stats.reasons[parsed.reason] = self.stats.reasons.get(parsed.reason, 0) + 1
            header = parsed.header
            if header is None:
                self.stats.malformed_packets += 1
                return [], None
            is_response, txid = header.is_response, header.txid
            message: Message | None = None
        else:
            is_response, txid = parsed.header.is_response, parsed.header.txid
            message = parsed
        # A query leaving (or a response arriving) is the client's side of the exchange.
        role: Role = "client" if packet.egress != is_response else "server"
        prefix = self.prefix(packet, role, txid)
        if not is_response:
            return self._on_query(packet, role, prefix, txid, message, parsed)
        return self._on_response(packet, role, prefix, message, parsed), None

    def _on_query(
        self,
        packet: DnsPacket,
        role: Role,
        prefix: Prefix,
        txid: int,
        message: Message | None,
        parsed: Message | DnsParseError,
    ) -> tuple[list[QueryResult], _Pending | None]:
        question = message.question if message is not None else None
        if question is None:
            self.stats.queries += 1
            self.stats.malformed += 1
            reason = parsed.reason if isinstance(parsed, DnsParseError) else "no_question"
            return [QueryResult(role, packet, txid, None, 1, "malformed", None, None, reason)], None
        key = (prefix, _qkey(question))
        pending = self._pending.get(key)
        if pending is not None:
            pending.attempts += 1
            self.stats.retransmissions += 1
            return [], None
        if len(self._pending) >= self._max_pending:
            old_key, _ = self._pending.popitem(last=False)
            self._unindex(old_key)
            self.stats.evicted += 1
        self.stats.queries += 1
        pending = _Pending(packet, question, packet.mono_ns + self._timeout_ns)
        self._pending[key] = pending
        self._by_prefix.setdefault(prefix, []).append(key[1])
        return [], pending

    def _on_response(
        self,
        packet: DnsPacket,
        role: Role,
        prefix: Prefix,
        message: Message | None,
        parsed: Message | DnsParseError,
    ) -> list[QueryResult]:
        qkeys = self._by_prefix.get(prefix)
        question = message.question if message is not None else None
        if question is not None:
            qkey = _qkey(question)
            if not qkeys or qkey not in qkeys:
                if qkeys:
                    self.stats.question_mismatches += 1
                elif (prefix, qkey) in self._expired:
                    self.stats.late_responses += 1
                else:
                    self.stats.unmatched_responses += 1
                return []
        elif qkeys is not None and len(qkeys) == 1:
            qkey = qkeys[0]  # malformed, or no question section (FORMERR, NOTIMP...)
        else:
            self.stats.unmatched_responses += 1
            return []
        key = (prefix, qkey)
        pending = self._pending.pop(key)
        self._unindex(key)
        if message is None:
            assert isinstance(parsed, DnsParseError)
            outcome: Outcome = "malformed"
            reason: str | None = parsed.reason
            self.stats.malformed += 1
        else:
            outcome, reason = "answered", None
            self.stats.answered += 1
        return [
            self._result(
                role,
                pending,
                txid=prefix[6],
                outcome=outcome,
                response=packet,
                message=message,
                reason=reason,
            )
        ]

    @staticmethod
    def _result(
        role: Role,
        pending: _Pending,
        *,
        txid: int,
        outcome: Outcome,
        response: DnsPacket | None,
        message: Message | None,
        reason: str | None,
    ) -> QueryResult:
        return QueryResult(
            role,
            pending.packet,
            txid,
            pending.question,
            pending.attempts,
            outcome,
            response,
            message,
            reason,
            pending.expansion,
            pending.asked_name,
        )

    def _unindex(self, key: tuple[Prefix, QKey]) -> None:
        prefix, qkey = key
        qkeys = self._by_prefix.get(prefix)
        if qkeys is None:
            return
        qkeys.remove(qkey)
        if not qkeys:
            del self._by_prefix[prefix]

    def expire(self, now_mono_ns: int) -> list[QueryResult]:
        """Time out every query pending since before ``now - timeout``."""
        results: list[QueryResult] = []
        pending = self._pending
        while pending:
            key, entry = next(iter(pending.items()))
            if entry.deadline_ns > now_mono_ns:
                break
            pending.popitem(last=False)
            self._unindex(key)
            self._expired[key] = None
            if len(self._expired) > EXPIRED_MEMORY:
                self._expired.popitem(last=False)
            self.stats.timeouts += 1
            results.append(
                self._result(
                    key[0][1],
                    entry,
                    txid=key[0][6],
                    outcome="timeout",
                    response=None,
                    message=None,
                    reason=None,
                )
            )
        return results

    def flush(self) -> list[QueryResult]:
        """At shutdown: everything still pending, as timeouts (their wait is cut short)."""
        return self.expire(1 << 63)
