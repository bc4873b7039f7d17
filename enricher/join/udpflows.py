"""The UDP join: one raw UDP flow window + the cluster's metadata -> one enriched flow. No I/O.

Named as the TCP join names a connection end (enrich.py): the local end by the pod uid of
the socket's cgroup, the remote end by its address at the window's start; a flow the
collector saw addressed to a Service carries the backend's address and the Service's name.
"""

from __future__ import annotations

from typing import Literal

from msgspec import UNSET
from msgspec.structs import replace

from enricher.join.classify import AddressClassifier
from enricher.join.dnsnames import DnsNames
from enricher.join.enrich import _OBSERVED, local_template, peer_class, template_of
from enricher.join.index import MetadataIndex
from flowscope.locality import is_unnamed
from flowscope.records import EnrichedUdpFlow, RawUdpFlow, udp_local_is_client
from flowscope.records.metadata import ServiceMeta


def enrich_udp(
    raw: RawUdpFlow,
    state: MetadataIndex,
    classifier: AddressClassifier,
    names: DnsNames | None = None,
) -> EnrichedUdpFlow:
    local = replace(
        local_template(raw, state),
        address=raw.local_addr,
        port=raw.local_port,
        container_id=raw.container_id,
    )
    remote = template_of(
        state.lookup(raw.remote_addr, raw.window_start_ns), raw.remote_addr, state, classifier
    )
    if raw.original_remote_addr is not None:
        svc = state.lookup(raw.original_remote_addr, raw.window_start_ns)
        if isinstance(svc, ServiceMeta) and remote.service != svc.name:
            remote = replace(remote, service=svc.name)
    remote = replace(remote, address=raw.remote_addr, port=raw.remote_port)
    role: Literal["client", "server"]
    if udp_local_is_client(raw.local_port, raw.remote_port):
        client, server, role, client_observed = local, remote, "client", True
        c2s, s2c = (raw.bytes_out, raw.packets_out), (raw.bytes_in, raw.packets_in)
    else:
        client, server, role = remote, local, "server"
        client_observed = remote.attribution in _OBSERVED
        c2s, s2c = (raw.bytes_in, raw.packets_in), (raw.bytes_out, raw.packets_out)
    domain = None
    if names is not None and role == "client" and is_unnamed(remote):
        domain = names.lookup(raw.node, raw.pod_uid, raw.remote_addr, raw.window_start_ns)
    return EnrichedUdpFlow(
        start_time_ns=raw.window_start_ns,
        end_time_ns=raw.window_end_ns,
        observer_node=raw.node,
        observer_role=role,
        client_observed=client_observed,
        network_type="ipv4" if raw.family == 4 else "ipv6",
        client=client,
        server=server,
        bytes_client_to_server=c2s[0],
        bytes_server_to_client=s2c[0],
        packets_client_to_server=c2s[1],
        packets_server_to_client=s2c[1],
        peer_class=peer_class(local, remote, classifier),
        server_domain=UNSET if domain is None else domain,
    )
