"""simnode: a simulated Kubernetes node on this machine, for tests and the demo.

A pod is a network namespace (``eth0`` on a veth into the run's bridge, an IPv4 address from
the pod CIDR) plus a cgroup v2 directory shaped like the kubelet's; its processes run in both.
``Cluster(cgroup_driver=..., runtime=...)`` picks the layout (``simnode.cgroup.Layout``): by
default the cgroupfs driver with containerd
(``<root>/fs-<run id>/kubepods/besteffort/pod<uid>/<container id>``); with systemd and CRI-O,
``<root>/fs-<run id>/kubepods.slice/kubepods-besteffort.slice/
kubepods-besteffort-pod<uid with _>.slice/crio-<container id>.scope``.
"Nodes" and "zones" are metadata only. ``write_objects`` writes the matching Node, Pod
(and Deployment, ReplicaSet, Service, EndpointSlice) objects as a ``kind: List`` YAML file.
Needs root, iproute2 and util-linux (nsenter).

Example::

    from pathlib import Path
    from simnode import Cluster, NodeSpec

    nodes = [NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]
    with Cluster(nodes) as cluster:  # cgroup_root=Path("/sys/fs/cgroup/unified") by default
        server = cluster.add_pod("server", node="node-b1")  # Deployment "server"
        client = cluster.add_pod("client", node="node-a1")
        cluster.add_service("server", selector={"app": "server"}, port=8080)
        cluster.write_objects(Path("/tmp/objects.yaml"))  # for the enricher

        proc = server.start_server(8080, reply_bytes=1000)  # simnode.traffic server
        server.wait_listening(8080, proc=proc)  # reads /proc/net/tcp: no probe connection
        summary = client.run_client(server.ip, 8080, count=10, send_bytes=5000)
        assert summary.completed == 10 and summary.bytes_sent == 50_000
        # Any other command: client.start([...]) -> Popen, client.run([...]) -> completed.
        # server.uid, server.container_id, server.cgroup_path, server.zone, server.ip ...
    # Everything is gone here, also if the body raised (and on SIGTERM or interpreter exit).

Leftovers of a crashed run (SIGKILL) are removed by ``simnode.sweep()`` (also run when a new
Cluster starts) or ``python -m simnode sweep``; runs whose owner process is alive are kept.
"""

from __future__ import annotations

from simnode.cgroup import DEFAULT_ROOT
from simnode.cluster import Cluster
from simnode.errors import SimNodeError
from simnode.pod import Pod
from simnode.spec import NodeSpec, PodMeta, ServiceMeta, default_nodes
from simnode.sweep import find_run, sweep
from simnode.traffic.summary import ClientSummary, ServerSummary

__all__ = [
    "DEFAULT_ROOT",
    "ClientSummary",
    "Cluster",
    "NodeSpec",
    "Pod",
    "PodMeta",
    "ServerSummary",
    "ServiceMeta",
    "SimNodeError",
    "default_nodes",
    "find_run",
    "sweep",
]
