"""The join: one raw connection end + the cluster's metadata -> one enriched record. No I/O.

The local end is named by the pod uid the collector read from the socket's cgroup (IPs lie
under hostNetwork and NAT); the remote end by the address, at the connection's start time.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from msgspec.structs import replace

from enricher.index import MetadataIndex
from enricher.metadata import NodeMeta, PodMeta, ServiceMeta
from flowscope.records import Endpoint, EnrichedTcpConnection, PeerClass, RawTcpConnection

# Ends that a flowscope collector runs beside (the DaemonSet covers every node), so a
# connection they opened is reported by their own collector too.
_OBSERVED = frozenset(("pod", "host", "node"))


@lru_cache(maxsize=65536)
def is_global_address(addr: str) -> bool | None:
    """True for internet addresses, False for private/ULA/loopback/link-local, None if unparsable.

    Cached: a node talks to a bounded set of external peers and parsing costs ~1 µs.
    """
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global


def _pod_template(pod: PodMeta, state: MetadataIndex) -> Endpoint:
    template = state.pod_endpoints.get(pod.uid)
    if template is not None:
        return template
    node = state.node(pod.node)
    kind, name = pod.workload_kind, pod.workload_name
    template = Endpoint(
        address="",
        port=0,
        attribution="pod",
        pod_name=pod.name,
        pod_uid=pod.uid,
        namespace=pod.namespace,
        workload_kind=kind,
        workload_name=name,
        deployment=name if kind == "Deployment" else None,
        statefulset=name if kind == "StatefulSet" else None,
        daemonset=name if kind == "DaemonSet" else None,
        node=pod.node,
        zone=node.zone if node else None,
        region=node.region if node else None,
    )
    state.pod_endpoints[pod.uid] = template
    return template


def local_endpoint(raw: RawTcpConnection, state: MetadataIndex) -> Endpoint:
    pod = state.pod(raw.pod_uid) if raw.pod_uid is not None else None
    if pod is not None:
        return replace(
            _pod_template(pod, state),
            address=raw.local_addr,
            port=raw.local_port,
            container_id=raw.container_id,
            pid=raw.pid or None,
            command=raw.comm or None,
        )
    node = state.node(raw.node)
    return Endpoint(
        address=raw.local_addr,
        port=raw.local_port,
        # A pod uid with no metadata yet is a pod we cannot name: not the host.
        attribution="host" if raw.pod_uid is None else "unresolved",
        pod_uid=raw.pod_uid,
        node=raw.node,
        zone=node.zone if node else None,
        region=node.region if node else None,
        container_id=raw.container_id,
        pid=raw.pid or None,
        command=raw.comm or None,
    )


def remote_endpoint(raw: RawTcpConnection, state: MetadataIndex) -> Endpoint:
    found = state.lookup(raw.remote_addr, raw.start_time_ns)
    addr, port = raw.remote_addr, raw.remote_port
    if isinstance(found, PodMeta):
        return replace(_pod_template(found, state), address=addr, port=port)
    if isinstance(found, NodeMeta):
        return Endpoint(
            address=addr,
            port=port,
            attribution="node",
            node=found.name,
            zone=found.zone,
            region=found.region,
        )
    if isinstance(found, ServiceMeta):
        # A ClusterIP the collector could not translate to a backend: the service is known,
        # the pod (and so its zone) is not.
        return Endpoint(
            address=addr,
            port=port,
            attribution="unresolved",
            namespace=found.namespace,
            workload_kind="Service",
            workload_name=found.name,
        )
    is_global = is_global_address(addr)
    return Endpoint(address=addr, port=port, attribution="external" if is_global else "unresolved")


def peer_class(local: Endpoint, remote: Endpoint) -> PeerClass:
    if remote.attribution in ("unresolved", "external") and remote.workload_kind is None:
        is_global = is_global_address(remote.address)
        if is_global is None:
            return "unknown"
        return "internet" if is_global else "private"
    if local.region is not None and remote.region is not None and local.region != remote.region:
        return "cross_region"
    if local.zone is not None and remote.zone is not None:
        return "same_zone" if local.zone == remote.zone else "cross_zone"
    return "unknown"


def enrich(raw: RawTcpConnection, state: MetadataIndex) -> EnrichedTcpConnection:
    local = local_endpoint(raw, state)
    remote = remote_endpoint(raw, state)
    # role "unknown" (e.g. a socket seen only after it was established): treat the local end
    # as the client. That keeps one orientation per record; client_observed stays True, so
    # pair metrics count it once from this side.
    local_is_client = raw.role != "server"
    if local_is_client:
        client, server = local, remote
        c2s, s2c = raw.bytes_sent, raw.bytes_received
        client_observed = True  # this very collector observed it
    else:
        client, server = remote, local
        c2s, s2c = raw.bytes_received, raw.bytes_sent
        client_observed = remote.attribution in _OBSERVED
    return EnrichedTcpConnection(
        start_time_ns=raw.start_time_ns,
        end_time_ns=raw.end_time_ns,
        observer_node=raw.node,
        observer_role=raw.role,
        client_observed=client_observed,
        network_type="ipv4" if raw.family == 4 else "ipv6",
        client=client,
        server=server,
        bytes_client_to_server=c2s,
        bytes_server_to_client=s2c,
        connect_latency_us=raw.connect_latency_us,
        srtt_us=raw.srtt_us,
        retrans_segs=raw.retrans_segs,
        peer_class=peer_class(local, remote),
    )
