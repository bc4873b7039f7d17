"""Build the Kafka record for one query result. Pure: no I/O."""

from __future__ import annotations

from collector.dns.matcher import QueryResult
from collector.dns.parser import rcode_name, type_name
from collector.dns.privacy import NamePrivacy
from collector.node.attribution import CgroupInfo
from flowscope.records import RawDnsQuery


def build_record(
    result: QueryResult,
    cgroup: CgroupInfo,
    node: str,
    privacy: NamePrivacy,
    backend: tuple[str, int] | None = None,
) -> RawDnsQuery:
    """``backend``: where the node's conntrack says a query to a ClusterIP was DNATed."""
    query = result.query
    local_addr, local_port = query.local
    remote_addr, remote_port = query.remote
    response = result.response
    message = result.message
    original: str | None = None
    if backend is not None and backend != (remote_addr, remote_port):
        # kube-proxy's DNAT is in the node's namespace: the pod's packets only ever carry
        # the ClusterIP, the backend is known from conntrack alone.
        original = remote_addr
        remote_addr, remote_port = backend
    elif result.role == "client":
        # Egress packets are past NAT; the socket's peer (connected UDP, TCP) or the response's
        # source (un-NATed on ingress) is what the application addressed.
        addressed = query.sock_peer_addr
        if addressed is None and response is not None:
            addressed = response.src_addr
        if addressed is not None and addressed != remote_addr:
            original = addressed
    question = result.question
    latency = result.latency_ns
    return RawDnsQuery(
        node=node,
        role=result.role,
        time_ns=query.time_ns,
        response_time_ns=response.time_ns if response is not None else None,
        latency_us=latency // 1000 if latency is not None else None,
        family=query.family,
        transport=query.transport,
        local_addr=local_addr,
        local_port=local_port,
        remote_addr=remote_addr,
        remote_port=remote_port,
        original_remote_addr=original,
        cgroup_id=query.cgroup_id,
        cgroup_path=cgroup.path,
        pod_uid=cgroup.pod_uid,
        container_id=cgroup.container_id,
        txid=result.txid,
        query_name=privacy.apply(question.name) if question is not None else None,
        query_type=type_name(question.qtype) if question is not None else None,
        name_privacy=privacy.label,
        outcome=result.outcome,
        rcode=rcode_name(message.rcode) if message is not None else None,
        answer_count=message.header.ancount if message is not None else None,
        answer_addrs=list(message.answer_addrs) if message is not None else [],
        answer_ttl_s=message.min_ttl if message is not None else None,
        response_truncated=message.header.truncated if message is not None else False,
        attempts=result.attempts,
        search_expansion=result.expansion,
        asked_name=privacy.apply(result.asked_name),
        malformed_reason=result.malformed_reason,
    )


def record_key(cgroup: CgroupInfo, node: str) -> str:
    """Partition key: the local pod, so one pod's records stay in order; else the node."""
    return cgroup.pod_uid if cgroup.pod_uid is not None else node
