"""The join: one raw connection end + the cluster's metadata -> one enriched record. No I/O.

The local end is named by the pod uid the collector read from the socket's cgroup (IPs lie
under hostNetwork and NAT); the remote end by the address, at the connection's start time.
"""

from __future__ import annotations

from typing import Protocol

import msgspec
from msgspec.structs import replace

from enricher.join.classify import AddressClassifier
from enricher.join.dnsnames import DnsNames
from enricher.join.index import MetadataIndex, Resolved, canonical_ip
from enricher.join.labels import container_fields
from flowscope.locality import is_unnamed, zone_class
from flowscope.records import (
    Attribution,
    Endpoint,
    EnrichedTcpConnection,
    PeerClass,
    RawTcpConnection,
)
from flowscope.records.metadata import NodeMeta, PodMeta, ServiceMeta

# Ends that a flowscope collector runs beside (the DaemonSet covers every node), so a
# connection they opened is reported by their own collector too.
_OBSERVED = frozenset(("pod", "host", "node"))


class LocalEnd(Protocol):
    """What names a record's local end: the raw TCP and UDP records both carry it."""

    @property
    def node(self) -> str: ...
    @property
    def pod_uid(self) -> str | None: ...
    @property
    def cgroup_path(self) -> str | None: ...


def _copied_fields() -> tuple[str, ...]:
    """Fields the enriched record takes unchanged from the raw one: those after
    ``peer_class`` that both records define (outcome, interim, sequence, ... as the shared
    package adds them)."""
    names = [f.name for f in msgspec.structs.fields(EnrichedTcpConnection)]
    raw = {f.name for f in msgspec.structs.fields(RawTcpConnection)}
    return tuple(n for n in names[names.index("peer_class") + 1 :] if n in raw)


COPIED_FIELDS = _copied_fields()

# Without settings: no cluster CIDR known, so every unknown private address may be a pod.
DEFAULT_CLASSIFIER = AddressClassifier()


def pod_template(pod: PodMeta, state: MetadataIndex) -> Endpoint:
    template = state.templates.get(pod.uid)
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
        job=name if kind == "Job" else None,
        cronjob=name if kind == "CronJob" else None,
        # A backend of several Services is named by the first; the Service a client dialed
        # (seen through NAT) replaces it on that client's records.
        service=pod.services[0] if pod.services else None,
        node=pod.node,
        zone=node.zone if node else None,
        region=node.region if node else None,
        **container_fields(pod),
        pod_labels=state.labels.pod(pod.labels),
        node_labels=state.labels.node(node.labels) if node else None,
    )
    state.templates[pod.uid] = template
    return template


def node_template(node: NodeMeta, state: MetadataIndex) -> Endpoint:
    key = "node\0" + node.name
    template = state.templates.get(key)
    if template is None:
        template = state.templates[key] = Endpoint(
            address="",
            port=0,
            attribution="node",
            node=node.name,
            zone=node.zone,
            region=node.region,
            node_labels=state.labels.node(node.labels),
        )
    return template


def service_template(svc: ServiceMeta, state: MetadataIndex) -> Endpoint:
    key = f"svc\0{svc.namespace}\0{svc.name}"
    template = state.templates.get(key)
    if template is None:
        # A ClusterIP the collector could not translate to a backend: the service is known,
        # the pod (and so its zone) is not.
        template = state.templates[key] = Endpoint(
            address="",
            port=0,
            attribution="unresolved",
            namespace=svc.namespace,
            workload_kind="Service",
            workload_name=svc.name,
            service=svc.name,
        )
    return template


EXTERNAL = Endpoint(address="", port=0, attribution="external")
UNRESOLVED = Endpoint(address="", port=0, attribution="unresolved")


def local_template(raw: LocalEnd, state: MetadataIndex) -> Endpoint:
    """The local end without its address, port and process (those vary per record)."""
    uid = raw.pod_uid
    if uid is not None:
        pod = state.pods.get(uid)
        if pod is not None:
            return pod_template(pod, state)
        # A pod uid with no metadata yet is a pod we cannot name: not the host.
        node = state.node(raw.node)
        return Endpoint(
            address="",
            port=0,
            attribution="unresolved",
            pod_uid=uid,
            node=raw.node,
            zone=node.zone if node else None,
            region=node.region if node else None,
            node_labels=state.labels.node(node.labels) if node else None,
        )
    # No pod uid: a host process, when the collector found the socket's cgroup and it is not
    # a pod's. When it found no cgroup at all (the cgroup was already removed, or the kernel
    # gave none), the owner is unknown: saying "host" would be a wrong answer.
    attribution: Attribution = "host" if raw.cgroup_path is not None else "unresolved"
    key = attribution + "\0" + raw.node
    template = state.templates.get(key)
    if template is None:
        node = state.node(raw.node)
        template = state.templates[key] = Endpoint(
            address="",
            port=0,
            attribution=attribution,
            node=raw.node,
            zone=node.zone if node else None,
            region=node.region if node else None,
            node_labels=state.labels.node(node.labels) if node else None,
        )
    return template


def remote_template(
    raw: RawTcpConnection, state: MetadataIndex, classifier: AddressClassifier = DEFAULT_CLASSIFIER
) -> Endpoint:
    """The remote end, named by its address at the connection's start, without address/port."""
    found = state.lookup(raw.remote_addr, raw.start_time_ns)
    return template_of(found, raw.remote_addr, state, classifier)


def template_of(
    found: Resolved | None, addr: str, state: MetadataIndex, classifier: AddressClassifier
) -> Endpoint:
    """The template of what an address resolved to (see MetadataIndex.lookup)."""
    if found is None:
        cls = classifier.classify(addr)
        # Outside every cluster we have metadata for: a known kind of peer, not a failure.
        return EXTERNAL if cls == "internet" or cls == "other_cluster" else UNRESOLVED
    if isinstance(found, PodMeta):
        return pod_template(found, state)
    if isinstance(found, NodeMeta):
        return node_template(found, state)
    return service_template(found, state)


def local_endpoint(raw: RawTcpConnection, state: MetadataIndex) -> Endpoint:
    return replace(
        local_template(raw, state),
        address=raw.local_addr,
        port=raw.local_port,
        container_id=raw.container_id,
        pid=raw.pid or None,
        command=raw.comm or None,
    )


def dialed_service(raw: RawTcpConnection, state: MetadataIndex) -> ServiceMeta | None:
    """The Service whose ClusterIP the client dialed, when the collector saw the NAT (the
    record's remote end is then the backend the kernel picked)."""
    if raw.original_remote_addr is None:
        return None
    found = state.lookup(raw.original_remote_addr, raw.start_time_ns)
    return found if isinstance(found, ServiceMeta) else None


def remote_endpoint(
    raw: RawTcpConnection, state: MetadataIndex, classifier: AddressClassifier = DEFAULT_CLASSIFIER
) -> Endpoint:
    template = remote_template(raw, state, classifier)
    svc = dialed_service(raw, state)
    if svc is not None and template.service != svc.name:
        template = replace(template, service=svc.name)
    return replace(template, address=raw.remote_addr, port=raw.remote_port)


def peer_class(
    local: Endpoint,
    remote: Endpoint,
    classifier: AddressClassifier = DEFAULT_CLASSIFIER,
    remote_addr: str | None = None,
) -> PeerClass:
    """``remote_addr`` stands in for ``remote.address`` when ``remote`` is a template."""
    if is_unnamed(remote):
        addr = remote.address if remote_addr is None else remote_addr
        return classifier.peer_class(classifier.classify(addr))
    return zone_class(local.region, local.zone, remote.region, remote.zone)


def missing_key(
    raw: RawTcpConnection,
    out: EnrichedTcpConnection,
    classifier: AddressClassifier = DEFAULT_CLASSIFIER,
) -> str | None:
    """What metadata the record still waits for (a key of :meth:`MetadataState.drain_changes`),
    or None when the record is as complete as it will get.

    A pod uid with no metadata, or an unknown address that may belong to the cluster, may
    just be late: the publisher and the collectors are not in step.
    """
    local, remote = (out.server, out.client) if raw.role == "server" else (out.client, out.server)
    if local.attribution == "unresolved" and raw.pod_uid is not None:
        return "uid:" + raw.pod_uid
    if (
        remote.attribution == "unresolved"
        and remote.workload_kind is None
        and classifier.holds_back(classifier.classify(remote.address))
    ):
        return "ip:" + canonical_ip(remote.address)
    return None


def server_domain(raw: RawTcpConnection, names: DnsNames | None) -> str | None:
    """The DNS name of a client's unnamed server (see DnsNames); call only for such ends."""
    if names is None or raw.role == "server":
        return None
    return names.lookup(raw.node, raw.pod_uid, raw.remote_addr, raw.start_time_ns)


def enrich(
    raw: RawTcpConnection,
    state: MetadataIndex,
    classifier: AddressClassifier = DEFAULT_CLASSIFIER,
    names: DnsNames | None = None,
) -> EnrichedTcpConnection:
    local = local_endpoint(raw, state)
    remote = remote_endpoint(raw, state, classifier)
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
    domain = server_domain(raw, names) if is_unnamed(remote) else None
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
        peer_class=peer_class(local, remote, classifier),
        **{name: getattr(raw, name) for name in COPIED_FIELDS},
        server_domain=msgspec.UNSET if domain is None else domain,
    )
