"""Build the Kafka record for one decoded event. Pure: no I/O.

:func:`build_record` makes the :class:`RawTcpConnection`: with :class:`collector.tcp.events.Decoder`
the readable definition of a record that ``collector/tcp/_encode.c`` is checked against
(tests/unit/collector/test_collector_encode_properties.py).
"""

from __future__ import annotations

import msgspec

from collector.node.attribution import CgroupInfo
from collector.tcp.events import TcpConnEvent
from flowscope.records import RawTcpConnection

_encode = msgspec.json.Encoder().encode


def encode_wire(record: RawTcpConnection | list[RawTcpConnection]) -> bytes:
    """JSON of one record or of a list of them (an array: a batch message, read with
    ``JsonCodec.decode_batch``)."""
    return _encode(record)


def build_record(
    event: TcpConnEvent,
    cgroup: CgroupInfo,
    node: str,
    nat: tuple[str, int] | None = None,
) -> RawTcpConnection:
    """``nat``: the backend (address, port) conntrack says the connection was DNATed to."""
    remote_addr, remote_port = event.remote_addr, event.remote_port
    original_addr: str | None = None
    original_port: int | None = None
    if nat is not None and nat != (remote_addr, remote_port):
        original_addr, original_port = remote_addr, remote_port
        remote_addr, remote_port = nat
    return RawTcpConnection(
        node=node,
        start_time_ns=event.start_time_ns,
        end_time_ns=event.end_time_ns,
        role=event.role,
        family=event.family,
        local_addr=event.local_addr,
        local_port=event.local_port,
        remote_addr=remote_addr,
        remote_port=remote_port,
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
        interim=event.interim,
        sequence=event.seq,
        outcome=event.outcome,
        close_state=None if event.interim else event.close_state,
        sk_err=event.sk_err,
        syn_retries=event.syn_retries,
        segs_in=event.segs_in,
        segs_out=event.segs_out,
        retrans_bytes=event.retrans_bytes,
        min_rtt_us=event.min_rtt_us,
        original_remote_addr=original_addr,
        original_remote_port=original_port,
    )


def record_key(cgroup: CgroupInfo, node: str) -> str:
    """Partition key: the local pod, so one pod's records stay in order; else the node."""
    return cgroup.pod_uid if cgroup.pod_uid is not None else node


def encode_record(
    e: TcpConnEvent,
    cgroup: CgroupInfo,
    node: str,
    nat: tuple[str, int] | None = None,
) -> bytes:
    """The JSON of ``build_record(e, cgroup, node, nat)``."""
    return _encode(build_record(e, cgroup, node, nat))
