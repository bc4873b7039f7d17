"""DNS packets -> parsed messages -> matched queries -> RawDnsQuery records -> the sink.

Two paths, chosen at construction: the C engine (:mod:`collector.dns.native`, one call per
batch, ~20x cheaper) when it was built, else the Python modules it is checked against
(abi, parser, matcher, record), which stay the spec.

:meth:`DnsPipeline.pump` does one round without blocking (drain the ring buffer, time out
old queries) so the collector's main loop can call it every turn next to the TCP source.
Every packet ends in a counter: parsed, or a parse failure by reason; every query in
exactly one result (answered, timeout, malformed) or in ``evicted``.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from collector.dns.abi import DecodeStats, DnsPacket, clock_offset_ns, decode_batch
from collector.dns.matcher import Matcher, MatcherStats, QueryResult
from collector.dns.native import NativeMatcher, Pairs, native_available
from collector.dns.parser import DnsParseError, Message, parse
from collector.dns.privacy import NamePrivacy
from collector.dns.record import build_record, record_key
from collector.dns.search import Released, SearchTracker
from collector.kernel.ringbuf import RecordBatch
from collector.node.attribution import CgroupResolver
from collector.node.nat import IPPROTO_TCP, IPPROTO_UDP, NatResolver
from flowscope.codec import JsonCodec
from flowscope.kafka import ProducerCounters
from flowscope.records import RawDnsQuery

log = logging.getLogger("collector.dns")

_U16 = struct.Struct("!H")
# A response in the ring buffer may be newer than "now" read before draining; queries are
# timed out only this much after their deadline so such a response is matched first.
EXPIRY_MARGIN_NS = 50_000_000
# How often the queries the kernel holds are looked through for timeouts (a map walk).
SWEEP_INTERVAL_NS = 100_000_000


class PacketSource(Protocol):
    def read(self, max_records: int = ...) -> RecordBatch: ...
    def kernel_counters(self) -> dict[str, int]: ...
    def detach(self) -> None: ...


class Sink(Protocol):
    counters: ProducerCounters

    def produce(self, topic: str, value: bytes | None, key: bytes | str | None = None) -> bool: ...


@dataclass
class PipelineStats:
    packets: int = 0
    messages: int = 0  # DNS messages parsed or failed (TCP segments may hold several)
    clipped: int = 0  # captured payload shorter than the packet's
    tcp_unframed: int = 0  # TCP data not starting with a whole length-prefixed message
    records: int = 0
    produce_refused: int = 0


class DnsPipeline:
    def __init__(
        self,
        source: PacketSource,
        sink: Sink,
        resolver: CgroupResolver,
        node_name: str,
        topic: str,
        privacy: NamePrivacy,
        timeout_s: float = 5.0,
        search: SearchTracker | None = None,
        max_batch: int = 8192,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        stats_interval_s: float = 10.0,
        nat: NatResolver | None = None,
        native: bool | None = None,
    ) -> None:
        """``native``: True requires the C engine, False takes the Python path, None (the
        default) the C engine when it was built."""
        self._source = source
        self._nat = nat
        self._sink = sink
        self._resolver = resolver
        self._node = node_name
        self._topic = topic
        self._privacy = privacy
        self._search = search
        self._max_batch = max_batch
        self._clock_ns = clock_ns
        self._codec = JsonCodec(RawDnsQuery)
        self._offset = clock_offset_ns()
        self.decode_stats = DecodeStats()
        self.stats = PipelineStats()
        self.matcher: Matcher | NativeMatcher
        self._native: NativeMatcher | None = None
        if native or (native is None and native_available()):
            backend = self._backend_of if nat is not None else None
            self._native = NativeMatcher(resolver, node_name, privacy, timeout_s, search, backend)
            self.matcher = self._native
        else:
            self.matcher = Matcher(timeout_s)
        self._last_search_gc = 0
        self._timeout_ns = int(timeout_s * 1e9)
        # DnsSource.sweep: the queries its program holds. Sources of plain packets (tests'
        # fakes) hold nothing in the kernel.
        self._sweep: Callable[[int], RecordBatch] | None = getattr(source, "sweep", None)
        self._next_sweep_ns = 0
        self._stats_interval_ns = int(stats_interval_s * 1e9)
        self._next_stats_ns = clock_ns() + self._stats_interval_ns

    def tick(self) -> None:
        """One turn of the collector's loop: pump, and log the counters now and then."""
        self.pump()
        now = self._clock_ns()
        if now >= self._next_stats_ns:
            log.info("dns stats %s", " ".join(f"{k}={v}" for k, v in self.counters().items()))
            self._next_stats_ns = now + self._stats_interval_ns

    def pump(self) -> int:
        """Drain the ring buffer and time out old queries. Returns records produced."""
        now = self._clock_ns()
        produced = 0
        while True:
            batch = self._source.read(self._max_batch)
            if not batch.data:
                break
            produced += self.process(batch)
            if len(batch) < self._max_batch:
                break
        if self._sweep is not None and now >= self._next_sweep_ns:
            # Held past the timeout: into the matcher as the packets they were, so that
            # expire() below times them out as if user space had held them all along.
            self._next_sweep_ns = now + SWEEP_INTERVAL_NS
            swept = self._sweep(now - EXPIRY_MARGIN_NS - self._timeout_ns)
            if swept.data:
                produced += self.process(swept)
        if self._native is not None:
            produced += self._produce(self._native.expire(now - EXPIRY_MARGIN_NS))
        else:
            assert isinstance(self.matcher, Matcher)
            produced += self._emit(self.matcher.expire(now - EXPIRY_MARGIN_NS))
        if self._search is not None:
            produced += self._hand_on(self._search.release(now - EXPIRY_MARGIN_NS))
        if self._search is not None and now - self._last_search_gc > 10_000_000_000:
            self._search.forget_idle(now)
            self._last_search_gc = now
            self._offset = clock_offset_ns()  # follow wall-clock steps
        return produced

    def process(self, batch: RecordBatch) -> int:
        if self._native is not None:
            pairs = self._native.process(batch, self._offset)
            self._sync_native_stats()
            return self._produce(pairs)
        return self.process_packets(decode_batch(batch, self._offset, self.decode_stats))

    def _sync_native_stats(self) -> None:
        assert self._native is not None
        c = self._native.counters()
        s, d = self.stats, self.decode_stats
        s.packets, s.messages, s.clipped = c["packets"], c["messages"], c["clipped"]
        s.tcp_unframed = c["tcp_unframed"]
        d.decoded, d.decode_errors, d.discarded = c["decoded"], c["decode_errors"], c["discarded"]

    def _produce(self, pairs: Pairs) -> int:
        """Records the C engine encoded: (partition key, JSON)."""
        produced = 0
        produce, topic = self._sink.produce, self._topic
        for key, value in pairs:
            if produce(topic, value, key):
                produced += 1
        self.stats.records += len(pairs)
        self.stats.produce_refused += len(pairs) - produced
        return produced

    def process_packets(self, packets: Iterable[DnsPacket]) -> int:
        """The Python path, one decoded packet at a time."""
        assert isinstance(self.matcher, Matcher)
        produced = 0
        for packet in packets:
            self.stats.packets += 1
            if packet.clipped:
                self.stats.clipped += 1
            for parsed in self._messages(packet):
                self.stats.messages += 1
                results, opened = self.matcher.observe(packet, parsed)
                if opened is not None and self._search is not None and packet.egress:
                    # A new client query: in wire order, the moment to place it in a search
                    # sequence.
                    q = opened.question
                    mark = self._search.mark(packet.cgroup_id, q.qtype, q.name, packet.mono_ns)
                    opened.expansion, opened.asked_name = mark
                if results:
                    produced += self._emit(results)
        return produced

    def _messages(self, packet: DnsPacket) -> Iterator[Message | DnsParseError]:
        if packet.transport == "udp":
            yield _parse(packet.payload, packet.clipped)
            return
        # DNS over TCP: each message is preceded by its 2-byte length (RFC 1035 4.2.2).
        # Messages split over several segments are not reassembled (counted, see README).
        data = packet.payload
        pos = 0
        while pos + 2 <= len(data):
            length = _U16.unpack_from(data, pos)[0]
            end = pos + 2 + length
            if length == 0 or (end > len(data) and not packet.clipped):
                self.stats.tcp_unframed += 1
                return
            yield _parse(data[pos + 2 : end], end > len(data))
            pos = end
        if pos != len(data) and not packet.clipped:
            self.stats.tcp_unframed += 1

    def _emit(self, results: list[QueryResult], settle: bool = True) -> int:
        produced = 0
        encode = self._codec.encode
        search = self._search if settle else None
        for result in results:
            if search is not None and result.role == "client" and search.settle(result):
                continue  # held until its search sequence is decided, see collector.dns.search
            cgroup = self._resolver.resolve(result.query.cgroup_id)
            record = build_record(result, cgroup, self._node, self._privacy, self._backend(result))
            self.stats.records += 1
            if self._sink.produce(self._topic, encode(record), record_key(cgroup, self._node)):
                produced += 1
            else:
                self.stats.produce_refused += 1
        return produced

    def _hand_on(self, released: list[Released]) -> int:
        """Held results the search tracker decided: re-marked where their mark changed."""
        if self._native is not None:
            return self._produce([self._native.remark(r.held, r.mark) for r in released])
        results = []
        for held, mark in released:
            assert isinstance(held, QueryResult)
            if mark is not None:
                held = held._replace(expansion=mark.expansion, asked_name=mark.asked_name)
            results.append(held)
        return self._emit(results, settle=False)

    def _backend(self, result: QueryResult) -> tuple[str, int] | None:
        """A client's query to a ClusterIP: the DNS pod kube-proxy sent it to (conntrack)."""
        if self._nat is None or result.role != "client":
            return None
        query = result.query
        proto = IPPROTO_UDP if query.transport == "udp" else IPPROTO_TCP
        return self._backend_of(query.family, proto, *query.local, *query.remote)

    def _backend_of(
        self,
        family: int,
        proto: int,
        local_addr: str,
        local_port: int,
        remote_addr: str,
        remote_port: int,
    ) -> tuple[str, int] | None:
        """The conntrack lookup of one client tuple (both paths call it)."""
        if self._nat is None or not self._nat.in_service(remote_addr):
            return None
        return self._nat.resolve_tuple(
            family, local_addr, remote_addr, local_port, remote_port, proto
        )

    def shutdown(self) -> None:
        """Detach, then match what the ring buffer still holds. Queries still waiting for
        an answer are left out (their wait was cut short, not timed out) and counted."""
        self._source.detach()
        self.pump()
        if self._search is not None:
            self._hand_on(self._search.flush())
        if len(self.matcher):
            log.info("%d DNS queries still pending at shutdown", len(self.matcher))

    def counters(self) -> dict[str, int]:
        if self._native is not None:
            self._sync_native_stats()
        m: MatcherStats = self.matcher.stats
        values: dict[str, int] = {
            "dns_packets": self.stats.packets,
            "dns_decode_errors": self.decode_stats.decode_errors,
            "dns_messages": self.stats.messages,
            "dns_clipped": self.stats.clipped,
            "dns_tcp_unframed": self.stats.tcp_unframed,
            "dns_queries": m.queries,
            "dns_retransmissions": m.retransmissions,
            "dns_answered": m.answered,
            "dns_timeouts": m.timeouts,
            "dns_malformed": m.malformed,
            "dns_malformed_packets": m.malformed_packets,
            "dns_unmatched_responses": m.unmatched_responses,
            "dns_late_responses": m.late_responses,
            "dns_question_mismatches": m.question_mismatches,
            "dns_evicted": m.evicted,
            "dns_pending": len(self.matcher),
            "dns_records": self.stats.records,
            "dns_produce_refused": self.stats.produce_refused,
        }
        values.update({f"dns_parse_{k}": v for k, v in sorted(m.reasons.items())})
        if self._search is not None:
            values["dns_search_expansions"] = self._search.stats.expansions
            values["dns_search_unknown_config"] = self._search.stats.unknown_config
            values["dns_search_held"] = self._search.stats.held
            values["dns_search_not_continued"] = self._search.stats.not_continued
            values["dns_search_unsettled"] = self._search.stats.unsettled
        try:
            kernel = self._source.kernel_counters()
        except Exception as exc:  # stats must not stop the pipeline
            log.warning("cannot read DNS kernel counters: %s", exc)
            kernel = {}
        values.update({f"dns_kernel_{k}": v for k, v in kernel.items()})
        return values


def _parse(data: bytes, clipped: bool) -> Message | DnsParseError:
    try:
        return parse(data, clipped)
    except DnsParseError as exc:
        return exc
