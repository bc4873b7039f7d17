"""Network health: kernel packet drops (collector) and health per network path (processors)."""

from __future__ import annotations

from typing import Literal

import msgspec


class RawPacketDrops(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Packets the kernel dropped in one collector window, per (socket cgroup, network
    namespace, drop reason, addresses), summed in the kernel (skb:kfree_skb).

    ``reason`` is the kernel's ``enum skb_drop_reason`` name without its ``SKB_DROP_REASON_``
    prefix (``NETFILTER_DROP``, ``NO_SOCKET``, ``TCP_CSUM``, ``QDISC_DROP``...), read from the
    running kernel's BTF; ``UNKNOWN_<n>`` when the kernel does not name the number. A packet
    dropped with no socket (forwarded, or not delivered yet) has ``cgroup_id`` 0 and is
    attributed by the network namespace it was in: a pod's (``pod_uid``) or the node's.
    """

    v: int = 1
    node: str
    window_start_ns: int
    window_end_ns: int
    reason: str
    reason_code: int  # the number in this kernel (changes between kernels; ``reason`` does not)
    packets: int
    bytes: int  # skb->len at the drop (link-layer header not included on the receive path)
    cgroup_id: int  # of the packet's socket; 0: no socket
    cgroup_path: str | None
    pod_uid: str | None  # from the socket's cgroup, else from the network namespace's processes
    container_id: str | None
    netns_ino: int  # 0: unknown
    node_netns: bool  # dropped in the node's own (root) network namespace
    family: Literal[0, 4, 6]  # 0: no IP header could be read
    ip_proto: int  # 6 TCP, 17 UDP, 1 ICMP...; 0: unknown
    src_addr: str | None
    dst_addr: str | None


class PathHealthMetric(msgspec.Struct, frozen=True, kw_only=True):
    """Network health of one path (source node -> destination node, or source zone ->
    destination zone) in one window, from the client ends of the connections that crossed it.

    The source is the client's end, the destination the server's; each connection is counted
    once (as for the pair metrics). ``failures`` counts failed connects by outcome (refused,
    connect_timeout, reset...); ``syn_retransmits`` the SYNs clients sent again;
    ``retransmission_rate`` = retransmitted segments / segments sent by the client ends.
    ``services`` lists the (client workload -> server workload) pairs that used the path.
    """

    schema_version: int = 1
    metric_id: str  # deterministic: window, source partition, scope, path
    window_start_ns: int
    window_end_ns: int
    source_partition: int
    scope: Literal["node", "zone"]
    source: str  # node or zone name; "unknown" when the end's metadata has none
    destination: str
    connections: int
    failed_connections: int
    failures: dict[str, int]  # outcome -> connections, failure outcomes only
    resets: int  # connections that ended in a reset (sent or received)
    connect_timeouts: int
    syn_retransmits: int
    connections_with_syn_retransmits: int
    retrans_segs: int
    segs_out: int
    retransmission_rate: float | None
    rtt_p50_us: float | None
    rtt_p90_us: float | None
    rtt_p99_us: float | None
    rtt_sketch: dict[str, object] | None  # mergeable (processors/core/sketch.py), None: no sample
    services: list[str]  # "client_workload -> server_workload", sorted
