"""Build the Kafka record for one decoded event. Pure: no I/O."""

from __future__ import annotations

from collector.attribution import CgroupInfo
from collector.events import TcpConnEvent
from flowscope.records import RawTcpConnection


def build_record(event: TcpConnEvent, cgroup: CgroupInfo, node: str) -> RawTcpConnection:
    return RawTcpConnection(
        node=node,
        start_time_ns=event.start_time_ns,
        end_time_ns=event.end_time_ns,
        role=event.role,
        family=event.family,
        local_addr=event.local_addr,
        local_port=event.local_port,
        remote_addr=event.remote_addr,
        remote_port=event.remote_port,
        pid=event.pid,
        comm=event.comm,
        cgroup_id=event.cgroup_id,
        cgroup_path=cgroup.path,
        pod_uid=cgroup.pod_uid,
        container_id=cgroup.container_id,
        bytes_sent=event.bytes_sent,
        bytes_received=event.bytes_received,
        srtt_us=event.srtt_us,
        retrans_segs=event.retrans_segs,
        connect_latency_us=event.connect_latency_us,
    )


def record_key(cgroup: CgroupInfo, node: str) -> str:
    """Partition key: the local pod, so one pod's records stay in order; else the node."""
    return cgroup.pod_uid if cgroup.pod_uid is not None else node
