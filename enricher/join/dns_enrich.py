"""The DNS join: one raw DNS query + the cluster's metadata -> one enriched record. No I/O.

Written for the enricher to call (it owns the metadata index); it depends only on the shared
records, and asks for metadata through :class:`DnsLookups`, a four-method protocol the
enricher implements over its time-aware index (templates it already builds are fine: the
address and port of every endpoint returned are replaced here).

The local end is named by the pod uid the collector read from the socket's cgroup, never by
IP; the remote end by address at the query's time. The server is then classified:

- ``node_local_cache``: the address the client sent to (or the server's) is one of
  NodeLocal DNSCache's link-local addresses, or the server is one of its workloads. A
  link-local address names no pod, so the server is named as the observing node (where the
  cache runs, hostNetwork) and the peer class is ``same_zone``.
- ``cluster_dns``: the client dialed a ClusterIP of a cluster DNS Service, or the server is a
  pod backing one (Endpoint.service in that namespace), or one of its configured workloads.
- ``upstream``: anything else (a resolver outside the cluster, a pod running its own DNS).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from msgspec.structs import replace

from flowscope.locality import is_unnamed, zone_class
from flowscope.records import (
    Attribution,
    DnsServerClass,
    Endpoint,
    EnrichedDnsQuery,
    PeerClass,
    RawDnsQuery,
)

# Ends that a flowscope collector runs beside: a query they sent is reported by them too.
OBSERVED_ATTRIBUTIONS = frozenset(("pod", "host", "node"))


class ServiceName(NamedTuple):
    namespace: str
    name: str


class DnsLookups(Protocol):
    """The metadata the DNS join needs. Endpoints may be templates (address/port ignored)."""

    def pod_endpoint(self, uid: str) -> Endpoint | None:
        """The pod with this uid (deleted pods within their grace period included)."""

    def node_endpoint(self, name: str) -> Endpoint | None:
        """The node (attribution "node", zone and region), for host processes and caches."""

    def endpoint_at(self, addr: str, t_ns: int) -> Endpoint | None:
        """Who held ``addr`` at ``t_ns``: a pod, else a node, else a Service's ClusterIP
        (attribution "unresolved", workload_kind "Service"); None when nothing is known."""

    def service_at(self, addr: str, t_ns: int) -> ServiceName | None:
        """The Service whose ClusterIP ``addr`` is (at ``t_ns``, if the index keeps time)."""


@dataclass(frozen=True)
class DnsServers:
    """What counts as the cluster's DNS and as a node-local cache (an enricher setting)."""

    cluster_dns_services: frozenset[ServiceName] = frozenset(
        {ServiceName("kube-system", "kube-dns")}
    )
    # Workload keys (namespace/kind/name), for DNS pods that back no Service we know of.
    cluster_dns_workloads: frozenset[str] = frozenset({"kube-system/Deployment/coredns"})
    # NodeLocal DNSCache's default address (k8s.io docs: 169.254.20.10).
    node_local_addresses: frozenset[str] = frozenset({"169.254.20.10"})
    node_local_workloads: frozenset[str] = frozenset({"kube-system/DaemonSet/node-local-dns"})


DEFAULT_DNS_SERVERS = DnsServers()


def fallback_peer_class(addr: str) -> PeerClass:
    """For an address the metadata does not name, when the caller gives no classifier."""
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return "unknown"
    return "internet" if ip.is_global else "private"


def _local(raw: RawDnsQuery, lookups: DnsLookups) -> Endpoint:
    node = lookups.node_endpoint(raw.node)
    zone = node.zone if node else None
    region = node.region if node else None
    if raw.pod_uid is not None:
        pod = lookups.pod_endpoint(raw.pod_uid)
        if pod is not None:
            base = pod
        else:  # a pod uid with no metadata (yet) is a pod we cannot name: not the host
            base = Endpoint(
                address="",
                port=0,
                attribution="unresolved",
                pod_uid=raw.pod_uid,
                node=raw.node,
                zone=zone,
                region=region,
            )
    else:
        # No cgroup found (already removed): the owner is unknown, not the host.
        attribution: Attribution = "host" if raw.cgroup_path is not None else "unresolved"
        base = Endpoint(
            address="", port=0, attribution=attribution, node=raw.node, zone=zone, region=region
        )
    return replace(
        base,
        address=raw.local_addr,
        port=raw.local_port,
        container_id=raw.container_id,
    )


def _remote(
    raw: RawDnsQuery, lookups: DnsLookups, classify: Callable[[str], PeerClass]
) -> Endpoint:
    found = lookups.endpoint_at(raw.remote_addr, raw.time_ns)
    if found is None:
        # Outside the cluster is a known kind of peer (as in the TCP join), not a failure.
        internet = classify(raw.remote_addr) == "internet"
        found = Endpoint(address="", port=0, attribution="external" if internet else "unresolved")
    return replace(found, address=raw.remote_addr, port=raw.remote_port)


def _node_local(raw: RawDnsQuery, lookups: DnsLookups, port: int, address: str) -> Endpoint:
    node = lookups.node_endpoint(raw.node)
    if node is None:
        return Endpoint(address=address, port=port, attribution="node", node=raw.node)
    return replace(node, address=address, port=port)


def _is_cluster_dns(server: Endpoint, servers: DnsServers) -> bool:
    if server.workload_key() in servers.cluster_dns_workloads:
        return True
    if server.namespace is None or server.service is None:
        return False
    return ServiceName(server.namespace, server.service) in servers.cluster_dns_services


def _peer_class(
    client: Endpoint, server: Endpoint, remote: Endpoint, classify: Callable[[str], PeerClass]
) -> PeerClass:
    """The same rule as the TCP join: unnamed remote ends by address, else zones/regions."""
    if is_unnamed(remote):
        return classify(remote.address)
    return zone_class(client.region, client.zone, server.region, server.zone)


def enrich_dns(
    raw: RawDnsQuery,
    lookups: DnsLookups,
    servers: DnsServers = DEFAULT_DNS_SERVERS,
    classify: Callable[[str], PeerClass] = fallback_peer_class,
) -> EnrichedDnsQuery:
    """Name both ends of one query and classify its server.

    ``classify`` names the peer class of an address the metadata does not know (the
    enricher passes its AddressClassifier: ``lambda a: c.peer_class(c.classify(a))``).
    """
    local = _local(raw, lookups)
    dialed = raw.original_remote_addr if raw.role == "client" else None
    server_class: DnsServerClass = "upstream"
    if raw.role == "client":
        client = local
        server = remote = _remote(raw, lookups, classify)
        client_observed = True  # this very collector observed it
        sent_to = (raw.remote_addr, dialed)
        if any(a in servers.node_local_addresses for a in sent_to if a is not None):
            server = remote = _node_local(raw, lookups, raw.remote_port, raw.remote_addr)
            server_class = "node_local_cache"
        else:
            dialed_svc = lookups.service_at(dialed, raw.time_ns) if dialed is not None else None
            if dialed_svc is not None and server.service != dialed_svc.name:
                # The Service the client dialed names the backend on this record (as for TCP).
                namespace = server.namespace or dialed_svc.namespace
                server = remote = replace(server, service=dialed_svc.name, namespace=namespace)
            if dialed_svc is not None and dialed_svc in servers.cluster_dns_services:
                server_class = "cluster_dns"
    else:
        server = local
        client = remote = _remote(raw, lookups, classify)
        client_observed = client.attribution in OBSERVED_ATTRIBUTIONS
        if raw.local_addr in servers.node_local_addresses:
            server_class = "node_local_cache"
    if server_class == "upstream":
        if server.workload_key() in servers.node_local_workloads:
            server_class = "node_local_cache"
        elif _is_cluster_dns(server, servers):
            server_class = "cluster_dns"
    peer: PeerClass = (
        "same_zone"
        if server_class == "node_local_cache" and raw.role == "client"
        else _peer_class(client, server, remote, classify)
    )
    return EnrichedDnsQuery(
        time_ns=raw.time_ns,
        response_time_ns=raw.response_time_ns,
        observer_node=raw.node,
        observer_role=raw.role,
        client_observed=client_observed,
        transport=raw.transport,
        network_type="ipv4" if raw.family == 4 else "ipv6",
        client=client,
        server=server,
        server_class=server_class,
        dialed_addr=dialed,
        peer_class=peer,
        txid=raw.txid,
        query_name=raw.query_name,
        query_type=raw.query_type,
        name_privacy=raw.name_privacy,
        outcome=raw.outcome,
        rcode=raw.rcode,
        answer_count=raw.answer_count,
        answer_addrs=list(raw.answer_addrs),
        response_truncated=raw.response_truncated,
        latency_us=raw.latency_us,
        attempts=raw.attempts,
        search_expansion=raw.search_expansion,
        asked_name=raw.asked_name,
        malformed_reason=raw.malformed_reason,
    )


def dns_missing_key(raw: RawDnsQuery, out: EnrichedDnsQuery) -> str | None:
    """What metadata the record still waits for, in the keys of the enricher's hold-back
    (``uid:<uid>``, ``ip:<addr>``), or None when it is as complete as it will get.

    Addresses are returned as the record spells them; the enricher canonicalises IPv6.
    Only private (possibly in-cluster) unnamed addresses are worth waiting for.
    """
    local, remote = (out.client, out.server) if raw.role == "client" else (out.server, out.client)
    if local.attribution == "unresolved" and raw.pod_uid is not None:
        return "uid:" + raw.pod_uid
    if (
        remote.attribution == "unresolved"
        and remote.workload_kind is None
        and out.server_class != "node_local_cache"
        and fallback_peer_class(remote.address) == "private"
    ):
        return "ip:" + remote.address
    return None
