"""Which DNS name a pod (or, failing that, its node) resolved to an address, by time.

The collector's DNS records carry the answer's addresses and TTL. A connection to an address
no cluster metadata names is named by the answer that held it when the connection started:
the same pod's most recent answer for that address within its TTL, else the most recent one
of any socket on the same node (a host process, a node-local DNS cache). Several names for
one address (a CDN) resolve to the one asked last before the connect; one name with several
addresses names each of them.

Memory is bounded per node: at most ``max_addresses_per_node`` addresses (least recently
answered evicted first, counted) with at most ``ANSWERS_PER_ADDRESS`` answers each (older
answers replaced). Answers are kept past their TTL until evicted, because a long connection's
records keep arriving (interim records) long after the lookup that named it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from enricher.join.index import canonical_ip
from flowscope.records import RawDnsQuery

ANSWERS_PER_ADDRESS = 8
DEFAULT_MAX_ADDRESSES_PER_NODE = 65_536


class Answer(NamedTuple):
    owner: str  # the pod uid that asked, "" for a host process
    from_ns: int  # the query's time
    until_ns: int  # the response's time + TTL: the address is not this name's after it
    name: str


@dataclass
class DnsNameCounters:
    answers_indexed: int = 0  # (address, answer) pairs kept
    answers_unusable: int = 0  # answered records without a plain name or a TTL
    evicted_addresses: int = 0  # addresses dropped for the per-node bound
    named_by_pod: int = 0  # lookups answered by the same pod's lookup
    named_by_node: int = 0  # ... by another socket's lookup on the same node
    expired: int = 0  # an answer held the address, but its TTL had passed at the connect
    no_name: int = 0  # no answer on that node ever held the address (as far as kept)

    def as_metrics(self) -> dict[str, int]:
        return {f"enricher_dns_names_{k}_total": v for k, v in vars(self).items()}


class DnsNames:
    """Fed with raw DNS records (the DNS joiner's thread), read by the TCP join (its own)."""

    def __init__(self, max_addresses_per_node: int = DEFAULT_MAX_ADDRESSES_PER_NODE) -> None:
        if max_addresses_per_node < 1:
            raise ValueError("max_addresses_per_node must be at least 1")
        self.max_addresses_per_node = max_addresses_per_node
        self._nodes: dict[str, OrderedDict[str, list[Answer]]] = {}
        self._lock = threading.Lock()  # two joiner threads; OrderedDict moves are not atomic
        self.counters = DnsNameCounters()

    def __len__(self) -> int:
        return sum(len(n) for n in self._nodes.values())

    def add(self, raw: RawDnsQuery) -> int:
        """Index a client-side answer; returns how many addresses it named."""
        if raw.role != "client" or not raw.answer_addrs:
            return 0
        if raw.name_privacy != "plain" or raw.query_name is None or raw.answer_ttl_s is None:
            self.counters.answers_unusable += 1
            return 0
        answered_ns = raw.response_time_ns if raw.response_time_ns is not None else raw.time_ns
        answer = Answer(
            raw.pod_uid or "",
            raw.time_ns,
            answered_ns + raw.answer_ttl_s * 1_000_000_000,
            raw.query_name.rstrip(".").lower(),
        )
        with self._lock:
            node = self._nodes.get(raw.node)
            if node is None:
                node = self._nodes[raw.node] = OrderedDict()
            for addr in raw.answer_addrs:
                ip = canonical_ip(addr)
                answers = node.get(ip)
                if answers is None:
                    answers = node[ip] = []
                    if len(node) > self.max_addresses_per_node:
                        node.popitem(last=False)
                        self.counters.evicted_addresses += 1
                else:
                    node.move_to_end(ip)
                # The same owner asking the same name again replaces its older answer.
                same = (answer.owner, answer.name)
                answers[:] = [a for a in answers if (a.owner, a.name) != same]
                answers.append(answer)
                if len(answers) > ANSWERS_PER_ADDRESS:
                    answers.sort(key=lambda a: a.from_ns)
                    del answers[: len(answers) - ANSWERS_PER_ADDRESS]
                self.counters.answers_indexed += 1
        return len(raw.answer_addrs)

    def lookup(self, node: str, pod_uid: str | None, addr: str, t_ns: int) -> str | None:
        """The name ``addr`` had for the socket at ``t_ns`` (the connect), counted."""
        c = self.counters
        with self._lock:
            on_node = self._nodes.get(node)
            answers = on_node.get(canonical_ip(addr)) if on_node is not None else None
            if not answers:
                c.no_name += 1
                return None
            owner = pod_uid or ""
            mine = best = None
            for a in answers:
                if not a.from_ns <= t_ns < a.until_ns:
                    continue
                if a.owner == owner and (mine is None or a.from_ns > mine.from_ns):
                    mine = a
                if best is None or a.from_ns > best.from_ns:
                    best = a
        if mine is not None:
            c.named_by_pod += 1
            return mine.name
        if best is not None:
            c.named_by_node += 1
            return best.name
        c.expired += 1
        return None
