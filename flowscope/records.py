"""Records that cross Kafka topics. The JSON schemas under schemas/ are generated from these.

Units are in field names (``_ns``, ``_us``, ``bytes_``). Times are Unix epoch nanoseconds
(event time: when the kernel saw it), which is what OTLP uses too.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Role = Literal["client", "server", "unknown"]
# How an endpoint was named: a pod (by cgroup for the local end, by IP for the remote end),
# the node itself (host processes, hostNetwork pods), or nothing known.
Attribution = Literal["pod", "host", "node", "unresolved", "external"]
# How a connection end finished (RawTcpConnection.outcome); "open" on interim records.
Outcome = Literal[
    "closed",  # FIN handshake (or the peer's FIN and ours)
    "refused",  # RST answered to our SYN
    "timed_out",  # the kernel gave up: SYN retries exhausted, or retransmissions/keepalive
    "reset_by_peer",  # RST received after the handshake
    "reset_locally",  # this side aborted: close() with unread data, SO_LINGER 0
    "unreachable",  # ICMP host/network unreachable
    "aborted",  # killed by an administrator (SOCK_DESTROY, ss -K)
    "abandoned",  # the application closed it before the handshake completed
    "error",  # another socket error (see sk_err)
    "open",  # interim record of a connection still open
]
PeerClass = Literal[
    "same_zone", "cross_zone", "cross_region", "other_cluster", "private", "internet", "unknown"
]


# gc=False on the high-volume records (decoded and built by the million): they hold only
# scalars, strings and other records, so no cycle can go through them, and instances the cyclic
# GC does not track cost it nothing (its passes over them were ~3% of the enricher's CPU).
class RawTcpConnection(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One end of one finished TCP connection, as a node's collector saw it.

    ``local_*`` is the end whose socket lives on this node; it is attributed by the socket's
    cgroup, never by IP. ``remote_*`` is only an address here: the enricher names it.
    """

    v: int = 1
    node: str  # the collector's node name
    start_time_ns: int  # first state change seen (SYN_SENT for clients, SYN_RECV for servers)
    end_time_ns: int  # the socket reached TCP_CLOSE
    role: Role
    family: Literal[4, 6]
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    pid: int  # 0 when no process context was seen for this socket
    comm: str
    cgroup_id: int
    cgroup_path: str | None  # relative to the cgroup v2 root; None if the cgroup is gone
    pod_uid: str | None  # from the kubelet's cgroup layout; None for host processes
    container_id: str | None
    bytes_sent: int  # payload bytes acknowledged by the peer
    bytes_received: int  # payload bytes received in order
    srtt_us: int
    retrans_segs: int
    connect_latency_us: int | None  # SYN sent -> established; clients only
    # Added in the collector's second version; defaults keep older records decodable.
    # Volumes (bytes_*, segs_*, retrans_*) are deltas since the connection's previous record:
    # interim records (interim=True, sequence 0, 1, ...) report an open connection every
    # interval, the final one (interim=False) closes it; their sum is the connection's total.
    # A connection is identified by (node, local/remote address and port, start_time_ns).
    interim: bool = False
    sequence: int = 0  # this record's place among the connection's records
    outcome: Outcome = "closed"
    close_state: str | None = None  # TCP state it closed from (ESTABLISHED, SYN_SENT, ...)
    sk_err: int = 0  # the socket's errno at close (111 refused, 110 timed out, 104 reset)
    syn_retries: int = 0  # SYNs retransmitted by the client before an answer (or giving up)
    segs_in: int = 0  # segments received, handshake included
    segs_out: int = 0  # segments sent, handshake and retransmissions included
    retrans_bytes: int = 0
    min_rtt_us: int = 0  # 0: no RTT sample (never established)
    # Service NAT (conntrack of the socket's network namespace): remote_* is where packets
    # really went (the backend, the same 4-tuple the server's own record carries);
    # original_remote_* is what the application connected to (a ClusterIP). None: no NAT.
    original_remote_addr: str | None = None
    original_remote_port: int | None = None


class RawUdpFlow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """UDP volume between one local socket owner and one remote address/port in one window,
    as a node's collector saw it (summed in the kernel; one record per pair per window).

    Bytes are IP packet bytes (IP and UDP headers included) of whole datagrams. The local end
    is attributed by the socket's cgroup, like :class:`RawTcpConnection`.
    """

    v: int = 1
    node: str
    window_start_ns: int
    window_end_ns: int
    family: Literal[4, 6]
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    cgroup_id: int
    cgroup_path: str | None
    pod_uid: str | None
    container_id: str | None
    bytes_out: int
    packets_out: int
    bytes_in: int
    packets_in: int


class Endpoint(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """One end of a connection after enrichment. Keys follow OpenTelemetry where one exists."""

    address: str
    port: int
    attribution: Attribution = msgspec.field(name="flowscope.attribution")
    pod_name: str | None = msgspec.field(name="k8s.pod.name", default=None)
    pod_uid: str | None = msgspec.field(name="k8s.pod.uid", default=None)
    namespace: str | None = msgspec.field(name="k8s.namespace.name", default=None)
    workload_kind: str | None = msgspec.field(name="flowscope.workload.kind", default=None)
    workload_name: str | None = msgspec.field(name="flowscope.workload.name", default=None)
    deployment: str | None = msgspec.field(name="k8s.deployment.name", default=None)
    statefulset: str | None = msgspec.field(name="k8s.statefulset.name", default=None)
    daemonset: str | None = msgspec.field(name="k8s.daemonset.name", default=None)
    job: str | None = msgspec.field(name="k8s.job.name", default=None)
    cronjob: str | None = msgspec.field(name="k8s.cronjob.name", default=None)
    service: str | None = msgspec.field(name="k8s.service.name", default=None)
    node: str | None = msgspec.field(name="k8s.node.name", default=None)
    zone: str | None = msgspec.field(name="cloud.availability_zone", default=None)
    region: str | None = msgspec.field(name="cloud.region", default=None)
    container_id: str | None = msgspec.field(name="container.id", default=None)
    pid: int | None = msgspec.field(name="process.pid", default=None)
    command: str | None = msgspec.field(name="process.command", default=None)

    def workload_key(self) -> str:
        """A stable grouping key: ``namespace/kind/name``, or the attribution for non-pods."""
        if self.workload_name is not None:
            return f"{self.namespace}/{self.workload_kind}/{self.workload_name}"
        if self.attribution in ("host", "node") and self.node is not None:
            return f"node/{self.node}"
        return f"{self.attribution}/{self.address}"


class EnrichedTcpConnection(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One end of one TCP connection, both ends named, in client/server orientation.

    The same connection is reported twice when both ends run a collector (``observer_role``
    tells which side reported). Pair metrics count client-side records, and server-side ones
    only when the client is not observed by any collector (``client_observed`` is False).
    """

    schema_version: int = 1
    start_time_ns: int = msgspec.field(name="start_time_unix_nano")
    end_time_ns: int = msgspec.field(name="end_time_unix_nano")
    observer_node: str = msgspec.field(name="flowscope.observer.node")
    observer_role: Role = msgspec.field(name="flowscope.observer.role")
    client_observed: bool = msgspec.field(name="flowscope.client.observed")
    transport: Literal["tcp"] = msgspec.field(name="network.transport", default="tcp")
    network_type: Literal["ipv4", "ipv6"] = msgspec.field(name="network.type")
    client: Endpoint
    server: Endpoint
    bytes_client_to_server: int
    bytes_server_to_client: int
    connect_latency_us: int | None
    srtt_us: int
    retrans_segs: int
    peer_class: PeerClass = msgspec.field(name="flowscope.peer.class")
    # Added for the stream processors (issue 6); the defaults keep earlier producers valid.
    # The enricher copies them from RawTcpConnection. Volumes are deltas on interim records.
    outcome: Outcome = "closed"  # how the observing end finished ("open" on interim records)
    interim: bool = False  # True: a periodic record of a connection still open
    sequence: int = 0  # this record's place among the connection's records (0 = first)
    segs_out: int = 0  # segments sent by the observing end, retransmissions included


class TcpPairMetric(msgspec.Struct, frozen=True, kw_only=True):
    """Connections between two workloads in one closed tumbling window (event time)."""

    schema_version: int = 1
    window_start_ns: int
    window_end_ns: int
    client_workload: str
    server_workload: str
    client_namespace: str | None
    server_namespace: str | None
    client_zones: list[str]
    server_zones: list[str]
    peer_classes: list[str]
    connections: int
    bytes_client_to_server: int
    bytes_server_to_client: int
    connect_latency_p50_us: float | None
    connect_latency_p99_us: float | None
    # The mergeable sketch the percentiles came from, so consumers can merge windows/pairs.
    connect_latency_sketch: dict[str, object] | None
    # Added with issue 6: one record per source partition; the id is deterministic (window,
    # partition, pair) so that a republished window can be recognised (processors/dedupe.py).
    metric_id: str | None = None
    source_partition: int | None = None


class TcpLatencyMetric(msgspec.Struct, frozen=True, kw_only=True):
    """Connection health between a client workload and a server workload (and the service it
    called) in one closed tumbling window (event time) of one source partition.

    ``metric_id`` is deterministic: a window republished after a worker restart carries the
    same id, and consumers keep the first record per id (processors/dedupe.py). Sum
    counts and merge sketches over ``source_partition`` for the pair's total.
    """

    schema_version: int = 1
    metric_id: str
    window_start_ns: int
    window_end_ns: int
    source_partition: int
    client_workload: str
    server_workload: str
    service: str | None  # k8s.service.name of the server end, when the enricher knew it
    client_namespace: str | None
    server_namespace: str | None
    connections: int  # finished connections (final records)
    failed_connections: int  # outcomes refused, timed_out, reset_by_peer, unreachable, error
    outcomes: dict[str, int]  # every final outcome, failures included ("closed": clean)
    failure_rate: float | None  # failed_connections / connections
    connect_latency_p50_us: float | None
    connect_latency_p90_us: float | None
    connect_latency_p99_us: float | None
    rtt_p50_us: float | None  # smoothed RTT at close, per connection
    rtt_p90_us: float | None
    rtt_p99_us: float | None
    retrans_segs: int
    segs_out: int  # 0 when the producer did not report segments
    retransmission_rate: float | None  # retrans_segs / segs_out
    # The mergeable sketches (processors/sketch.py) the percentiles came from.
    connect_latency_sketch: dict[str, object] | None
    rtt_sketch: dict[str, object] | None


class CostPairMetric(msgspec.Struct, frozen=True, kw_only=True):
    """Bytes and data-transfer dollars between two workloads and two zones in one closed
    window of one source partition. Source = the client end, destination = the server end.

    Units: bytes are TCP payload bytes; dollars are USD at the price table's per-GB prices
    (GB = 10**9 bytes unless the table says GiB), rounded to 1e-9 USD. ``cost_usd`` =
    ``cost_usd_source`` (charged to the source's account: what it sent and received) +
    ``cost_usd_destination``. Each connection is counted once (client side when observed).
    """

    schema_version: int = 1
    metric_id: str
    window_start_ns: int
    window_end_ns: int
    source_partition: int
    source_workload: str
    destination_workload: str
    source_namespace: str | None
    destination_namespace: str | None
    source_zone: str | None
    destination_zone: str | None
    cost_class: str  # same_zone, cross_zone, cross_region, internet, private, unknown
    priced: bool  # False: the price table has no price for this class (cost 0)
    cloud: str  # the price table used
    connections: int
    bytes_source_to_destination: int
    bytes_destination_to_source: int
    cost_usd: float
    cost_usd_source: float
    cost_usd_destination: float


class CostRollupMetric(msgspec.Struct, frozen=True, kw_only=True):
    """Data-transfer bytes and dollars charged to one workload or one namespace in one closed
    window of one source partition (the sum over its CostPairMetric shares)."""

    schema_version: int = 1
    metric_id: str
    window_start_ns: int
    window_end_ns: int
    source_partition: int
    scope: Literal["workload", "namespace"]
    name: str  # a workload key (namespace/kind/name) or a namespace
    bytes_sent: int
    bytes_received: int
    cost_usd: float
    cost_usd_by_class: dict[str, float]
    bytes_by_class: dict[str, int]  # sent + received


class AlertEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An alert rule started or stopped holding for one group (firing / resolved).

    ``alert_id`` names one episode (rule, group, first breaching window): the firing and the
    resolved event of an episode share it, and a re-evaluation after a restart reproduces it.
    """

    schema_version: int = 1
    alert_id: str
    status: Literal["firing", "resolved"]
    rule: str
    severity: str
    metric: str
    group: dict[str, str | None]
    affected_workloads: list[str]
    threshold: float
    # The window values that crossed (firing) or the first window that did not (resolved).
    evidence: list[dict[str, object]]
    window_start_ns: int  # the window that caused this event
    window_end_ns: int
    time_ns: int  # when it was decided (wall clock)


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A record a stage could not process, with why. Counted and kept, never dropped."""

    stage: str  # e.g. "enricher"
    reason: str
    source_topic: str
    partition: int
    offset: int
    key: str | None
    payload: str  # the original bytes, decoded as UTF-8 with replacement
    time_ns: int


DnsOutcome = Literal[
    "answered",  # a response came back (any rcode: NXDOMAIN and SERVFAIL are answers)
    "timeout",  # no response within the collector's DNS timeout
    "malformed",  # the query, or its response, is not a valid DNS message
]


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
    response_truncated: bool = False  # TC bit: the client should retry over TCP
    attempts: int = 1  # identical query packets (1 + retransmissions)
    # Client side, from the pod's resolv.conf: whether this query was a search-path
    # expansion (ndots), and the name the application asked for when it is part of a search
    # sequence. None: unknown (server side, or the client's resolv.conf was unreadable).
    search_expansion: bool | None = None
    asked_name: str | None = None
    malformed_reason: str | None = None  # the parser's reason (bad_pointer, truncated...)


# Added with the DNS half of issues 4 and 6 (flowscope/dns_enrich.py, processors/dns.py).
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
    first record per id (processors/dedupe.py); sum over ``source_partition`` for totals.
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


class CollectorHealth(msgspec.Struct, frozen=True, kw_only=True):
    """One collector's counters at one time: every loss it can count (kernel ring buffer,
    decode errors, Kafka buffer full, delivery failures, in records) beside its throughput
    counters; the same numbers as its Prometheus endpoint."""

    v: int = 1
    node: str
    time_ns: int
    uptime_s: float
    counters: dict[str, int]
