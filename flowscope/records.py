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
PeerClass = Literal[
    "same_zone", "cross_zone", "cross_region", "private", "internet", "unknown"
]


class RawTcpConnection(msgspec.Struct, frozen=True, kw_only=True):
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


class Endpoint(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
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


class EnrichedTcpConnection(msgspec.Struct, frozen=True, kw_only=True):
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
