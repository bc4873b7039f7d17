"""TCP and UDP as the collector sees them, and after enrichment.

gc=False on the high-volume records (decoded and built by the million): they hold only
scalars, strings and other records, so no cycle can go through them, and instances the cyclic
GC does not track cost it nothing (its passes over them were ~3% of the enricher's CPU).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from flowscope.records.endpoint import Endpoint
from flowscope.records.vocabulary import OutcomeField, PeerClass, Role


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
    outcome: OutcomeField = "closed"
    close_state: str | None = None  # TCP state it closed from (ESTABLISHED, SYN_SENT, ...)
    sk_err: int = 0  # the socket's errno at close (111 refused, 110 timed out, 104 reset)
    # SYNs retransmitted by the client before the answer came, or before it or the kernel
    # gave up (0 for servers); on a connect that got no answer, >= 1 is connect_timeout.
    syn_retries: int = 0
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
    # Sent to a Service address: remote_* is the backend conntrack names, these the Service.
    original_remote_addr: str | None = None
    original_remote_port: int | None = None


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
    # Read by the stream processors; the defaults keep earlier producers valid.
    # The enricher copies them from RawTcpConnection. Volumes are deltas on interim records.
    outcome: OutcomeField = "closed"  # how the observing end finished ("open" on interim records)
    interim: bool = False  # True: a periodic record of a connection still open
    sequence: int = 0  # this record's place among the connection's records (0 = first)
    segs_out: int = 0  # segments sent by the observing end, retransmissions included
    # SYNs the client retransmitted before the answer came or before it or the kernel gave up
    # (0 for servers), as RawTcpConnection has it: with outcome connect_timeout, how long the
    # application waited (1 retry ~1 s, 2 ~3 s, 3 ~7 s with the default 1 s initial RTO).
    syn_retries: int = 0
    # The server's domain name (OpenTelemetry ``server.address``) when the server is outside
    # the cluster's metadata: the name whose DNS answer the client's pod (else its node) got
    # for this address last before the connect, within the answer's TTL. Absent when no such
    # answer is known (and on server-side records: the client is not named by DNS).
    server_domain: str | msgspec.UnsetType = msgspec.field(
        name="server.address", default=msgspec.UNSET
    )


# Linux's default net.ipv4.ip_local_port_range: where clients' ports come from.
EPHEMERAL_PORTS = range(32768, 61000)


def udp_local_is_client(local_port: int, remote_port: int) -> bool:
    """UDP has no handshake to say who called whom: the server is the end on a fixed port,
    i.e. the one port of the two outside the ephemeral range, else the lower one (a tie:
    the local end is the client)."""
    local_eph, remote_eph = local_port in EPHEMERAL_PORTS, remote_port in EPHEMERAL_PORTS
    if local_eph != remote_eph:
        return local_eph
    return local_port >= remote_port


class EnrichedUdpFlow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """UDP volume between two named ends in one collector window, client/server oriented.

    The server is the end on a fixed port (``udp_local_is_client``: of the two ports, the one
    outside Linux's ephemeral range 32768-60999, else the lower). Each end's collector reports
    the flow; metrics count client-side records, and server-side ones only when the client is
    not observed by any collector (``client_observed`` is False), as for TCP. Bytes are IP
    packet bytes of whole datagrams (headers included).
    """

    schema_version: int = 1
    start_time_ns: int = msgspec.field(name="start_time_unix_nano")  # the collector's window
    end_time_ns: int = msgspec.field(name="end_time_unix_nano")
    observer_node: str = msgspec.field(name="flowscope.observer.node")
    observer_role: Literal["client", "server"] = msgspec.field(name="flowscope.observer.role")
    client_observed: bool = msgspec.field(name="flowscope.client.observed")
    transport: Literal["udp"] = msgspec.field(name="network.transport", default="udp")
    network_type: Literal["ipv4", "ipv6"] = msgspec.field(name="network.type")
    client: Endpoint
    server: Endpoint
    bytes_client_to_server: int
    bytes_server_to_client: int
    packets_client_to_server: int
    packets_server_to_client: int
    peer_class: PeerClass = msgspec.field(name="flowscope.peer.class")
    # As EnrichedTcpConnection's: the DNS name of a server outside the cluster's metadata,
    # from the client's answers valid at the window's start; absent when none is known.
    server_domain: str | msgspec.UnsetType = msgspec.field(
        name="server.address", default=msgspec.UNSET
    )
