"""Raw records for the enricher's unit tests: one client-side connection, fields overridable."""

from __future__ import annotations

from typing import Any

from flowscope.records import RawTcpConnection

S = 1_000_000_000
T0 = 1_700_000_000 * S


def raw_connection(**kw: Any) -> RawTcpConnection:
    """Pod c1 (10.0.1.1) on node-a connecting to 10.0.2.1:5432 at T0 + 10 s."""
    base: dict[str, Any] = {
        "node": "node-a",
        "start_time_ns": T0 + 10 * S,
        "end_time_ns": T0 + 11 * S,
        "role": "client",
        "family": 4,
        "local_addr": "10.0.1.1",
        "local_port": 40000,
        "remote_addr": "10.0.2.1",
        "remote_port": 5432,
        "pid": 123,
        "comm": "curl",
        "cgroup_id": 77,
        "cgroup_path": "kubepods/podc1/abc",
        "pod_uid": "c1",
        "container_id": "abc",
        "bytes_sent": 100,
        "bytes_received": 2000,
        "srtt_us": 150,
        "retrans_segs": 1,
        "connect_latency_us": 300,
    }
    base.update(kw)
    return RawTcpConnection(**base)


# The same record inside the 10.244.0.0/16 cluster some tests configure, with small volumes.
IN_CLUSTER: dict[str, Any] = {
    "local_addr": "10.244.1.1",
    "remote_addr": "10.244.2.1",
    "remote_port": 80,
    "pid": 1,
    "cgroup_id": 1,
    "cgroup_path": None,
    "container_id": None,
    "bytes_sent": 1,
    "bytes_received": 2,
    "srtt_us": 3,
    "retrans_segs": 0,
    "connect_latency_us": 4,
}
