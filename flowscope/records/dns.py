"""DNS queries as the collector sees them, after enrichment, and per window."""

from __future__ import annotations

from typing import Literal

import msgspec

from flowscope.records.endpoint import Endpoint
from flowscope.records.vocabulary import PeerClass

DnsOutcome = Literal[
    "answered",  # a response came back (any rcode: NXDOMAIN and SERVFAIL are answers)
    "timeout",  # no response within the collector's DNS timeout
    "malformed",  # the query, or its response, is not a valid DNS message
]


# gc=False: see transport.py.
class RawDnsQuery(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One DNS query and its outcome, as one local socket (client or server) saw it.

    An exchange between two pods of one node is reported twice: by the client's socket
    (``role`` client: ``remote_*`` is the server) and by the server's (``role`` server:
    ``remote_*`` is the client). ``local_*`` is attributed by the socket's cgroup, never by
    IP. Latency is measured on the observing socket (client: query sent -> response
    received). Retransmissions of an identical query are one record (``attempts``).
    """

    v: int = 1
    node: str
    role: Literal["client", "server"]
    time_ns: int  # the (first) query packet
    response_time_ns: int | None  # None unless outcome is answered/malformed with a response
    latency_us: int | None
    family: Literal[4, 6]
    transport: Literal["udp", "tcp"]
    local_addr: str
    local_port: int
    remote_addr: str  # client side: where the query went (after Service DNAT, if any)
    remote_port: int
    # Client side: the address the application sent to (the socket's peer, or the source of
    # the response), when NAT made it differ from remote_addr (a DNS Service's ClusterIP).
    original_remote_addr: str | None = None
    cgroup_id: int
    cgroup_path: str | None
    pod_uid: str | None  # None for host processes
    container_id: str | None
    txid: int
    query_name: str | None  # without the trailing dot; hashed or None per name_privacy
    query_type: str | None  # "A", "AAAA", "TYPE65"...; None if the query was malformed
    name_privacy: Literal["plain", "hashed", "dropped"] = "plain"
    outcome: DnsOutcome
    rcode: str | None  # "NOERROR", "NXDOMAIN", "SERVFAIL"... (EDNS extended included)
    answer_count: int | None  # the response's answer section count
    answer_addrs: list[str] = msgspec.field(default_factory=list)  # A/AAAA answers
    # The smallest TTL of the answer section's A, AAAA and CNAME records: how long a client
    # may use answer_addrs. None: no such record (or no response).
    answer_ttl_s: int | None = None
    response_truncated: bool = False  # TC bit: the client should retry over TCP
    attempts: int = 1  # identical query packets (1 + retransmissions)
    # Client side, from the pod's resolv.conf: whether this query was a search-path
    # expansion (ndots), and the name the application asked for when it is part of a search
    # sequence. None: unknown (server side, or the client's resolv.conf was unreadable).
    search_expansion: bool | None = None
    asked_name: str | None = None
    malformed_reason: str | None = None  # the parser's reason (bad_pointer, truncated...)


# Read by the DNS join (enricher/join/dns_enrich.py) and metrics (processors/dns/aggregate.py).
# Who answered a query: the cluster's DNS Service (its ClusterIP or one of its pods), a
# node-local cache (NodeLocal DNSCache's link-local address, or its pods), or anything else.
DnsServerClass = Literal["cluster_dns", "node_local_cache", "upstream"]


class EnrichedDnsQuery(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One DNS query, both ends named, in client/server orientation.

    Like :class:`EnrichedTcpConnection`, an exchange between two observed ends is reported
    twice (``observer_role``); metrics count client-side records, and server-side ones only
    when no collector saw the client (``client_observed`` is False). ``server`` is where the
    query went after Service NAT; ``dialed_addr`` is the address the client sent to when NAT
    made it differ (a DNS Service's ClusterIP). Query fields are copied from
    :class:`RawDnsQuery`: ``search_expansion`` marks search-path (ndots) expansions of
    ``asked_name``, whose NXDOMAIN answers are noise rather than failures.
    """

    schema_version: int = 1
    time_ns: int = msgspec.field(name="time_unix_nano")  # the (first) query packet
    response_time_ns: int | None = msgspec.field(name="response_time_unix_nano")
    observer_node: str = msgspec.field(name="flowscope.observer.node")
    observer_role: Literal["client", "server"] = msgspec.field(name="flowscope.observer.role")
    client_observed: bool = msgspec.field(name="flowscope.client.observed")
    transport: Literal["udp", "tcp"] = msgspec.field(name="network.transport")
    network_type: Literal["ipv4", "ipv6"] = msgspec.field(name="network.type")
    client: Endpoint
    server: Endpoint
    server_class: DnsServerClass = msgspec.field(name="flowscope.dns.server.class")
    dialed_addr: str | None = None
    peer_class: PeerClass = msgspec.field(name="flowscope.peer.class")
    txid: int
    query_name: str | None  # hashed or None per name_privacy
    query_type: str | None
    name_privacy: Literal["plain", "hashed", "dropped"] = "plain"
    outcome: DnsOutcome
    rcode: str | None
    answer_count: int | None
    answer_addrs: list[str] = msgspec.field(default_factory=list)
    response_truncated: bool = False
    latency_us: int | None  # measured on the observing socket
    attempts: int = 1
    search_expansion: bool | None = None
    asked_name: str | None = None
    malformed_reason: str | None = None


class DnsMetric(msgspec.Struct, frozen=True, kw_only=True):
    """DNS queries of one client workload to one DNS server for one query name group, in one
    closed tumbling window (event time = query time) of one source partition.

    Each query is counted once (client side when observed). ``queries`` = ``answered`` +
    ``timeouts`` + ``malformed``; ``rcodes`` splits ``answered``. Failures: SERVFAIL,
    REFUSED, timeouts, malformed, and NXDOMAIN of a name that is not a search-path expansion;
    NXDOMAIN of expansions is ``search_noise``, not a failure, and ``failure_rate`` =
    ``failed`` / (``queries`` - ``search_noise``). ``metric_id`` is deterministic: keep the
    first record per id (processors/core/dedupe.py); sum over ``source_partition`` for totals.
    """

    schema_version: int = 1
    metric_id: str
    window_start_ns: int
    window_end_ns: int
    source_partition: int
    client_workload: str
    client_namespace: str | None
    server: str  # the server's workload key (namespace/kind/name) or attribution/address
    server_class: DnsServerClass
    server_service: str | None  # the DNS Service the client dialed or the server backs
    name_group: str  # per the processors' DNS name grouping setting
    queries: int
    answered: int
    timeouts: int
    malformed: int
    rcodes: dict[str, int]  # answered queries by response code
    failed: int
    failures: dict[str, int]  # failed queries by reason (rcode, "timeout", "malformed")
    failure_rate: float | None  # failed / (queries - search_noise)
    search_expansions: int  # queries that were search-path expansions (any outcome)
    search_noise: int  # expansions answered NXDOMAIN: not failures
    retransmissions: int  # identical query packets beyond the first (attempts - 1)
    truncated: int  # responses with the TC bit (the client retries over TCP)
    latency_p50_us: float | None  # answered queries only
    latency_p90_us: float | None
    latency_p99_us: float | None
    latency_sketch: dict[str, object] | None
