"""Service NAT where kube-proxy puts it: rules in the node's root namespace, on every pod
wiring and kube-proxy mode the rig models, and no NAT at all under socket-level balancing.

Each case builds its own cluster (pods wired on a bridge or routed with a /32 each, Services
programmed as kube-proxy's nftables or iptables mode does), connects a client pod to a
ClusterIP for real, and checks the collector's records: the client's names the backend pod
and keeps the ClusterIP it dialed, both ends carry the same 4-tuple, the translation was found
in the node's conntrack (not the pod's), and a refused connect is counted as having no entry.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator

import pytest
from test_collector_outcomes import (
    collect,
    finals,
    free_port,
    run_client,
    server_result,
    start_server,
)

from collector.node.attribution import CgroupResolver
from collector.node.nat import NatResolver, parse_cidrs
from collector.settings import DEFAULT_BPF_OBJECT
from collector.tcp.events import TcpConnEvent
from collector.tcp.record import build_record
from collector.tcp.source import TcpConnSource
from flowscope.records import RawTcpConnection
from simnode import Cluster, NodeSpec

NODES = [NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]
LAYOUTS = [
    ("bridge", "nftables"),
    ("bridge", "iptables"),
    ("routed", "nftables"),
    ("routed", "iptables"),
]


@pytest.fixture(scope="module")
def source(bpf_built: None) -> Iterator[TcpConnSource]:
    with TcpConnSource(DEFAULT_BPF_OBJECT, ringbuf_bytes=4 << 20) as src:
        yield src


def collect_records(
    source: TcpConnSource,
    cluster: Cluster,
    service_cidrs: str,
    match: Callable[[TcpConnEvent], bool],
    done: Callable[[list[TcpConnEvent]], bool],
) -> tuple[list[RawTcpConnection], NatResolver]:
    """The final events ``match`` selects, built into records as the collector builds them:
    the local end by cgroup, the Service NAT through conntrack. Returns the resolver too, for
    its counters."""
    nat = NatResolver(parse_cidrs(service_cidrs))
    resolver = CgroupResolver(cluster.cgroup_root)
    try:
        events = collect(source, match, done)
        records = [
            build_record(e, resolver.resolve(e.cgroup_id), "node-a1", nat.resolve(e))
            for e in finals(events)
        ]
    finally:
        nat.close()
    return records, nat


@pytest.mark.parametrize(("wiring", "mode"), LAYOUTS)
def test_service_nat_is_resolved_in_the_node_namespace(
    source: TcpConnSource, root_required: None, wiring: str, mode: str
) -> None:
    with Cluster(NODES, pod_wiring=wiring, kube_proxy=mode) as cluster:  # type: ignore[arg-type]
        client = cluster.add_pod("client", node="node-a1")
        server = cluster.add_pod("server", node="node-b1")
        port = free_port()
        svc = cluster.add_service("web", selector={"app": "server"}, port=80, target_port=port)
        cluster_ip = svc.cluster_ip
        proc = start_server(server, port, expect=1000, reply=2000, abort=False)
        result = run_client(client, cluster_ip, 80, send=1000)
        server_result(proc)
        refused = run_client(client, cluster_ip, 80)  # nothing listens any more
        assert result["received"] == 2000 and refused["error"] == 111
        # The pod's own namespace never tracked it: kube-proxy's rules are the node's.
        shown = client.run(["conntrack", "-L", "-d", cluster_ip], check=False)
        assert cluster_ip not in shown.stdout

        records, nat = collect_records(
            source,
            cluster,
            f"{cluster_ip}/32",
            lambda e: port in (e.local_port, e.remote_port) or e.remote_addr == cluster_ip,
            lambda es: len(finals(es)) >= 3,
        )
    by_port = {(r.role, r.local_port): r for r in records}
    c = by_port[("client", result["port"])]
    s = next(r for r in records if r.role == "server")
    failed = by_port[("client", refused["port"])]
    assert (c.original_remote_addr, c.original_remote_port) == (cluster_ip, 80)
    assert (c.remote_addr, c.remote_port) == (server.ip, port)
    assert (c.bytes_sent, c.bytes_received, c.outcome) == (1000, 2000, "closed")
    # Both ends now carry the same 4-tuple: consumers can match them.
    assert (c.local_addr, c.local_port, c.remote_addr, c.remote_port) == (
        s.remote_addr,
        s.remote_port,
        s.local_addr,
        s.local_port,
    )
    assert (s.original_remote_addr, s.pod_uid, c.pod_uid) == (None, server.uid, client.uid)
    # Known limit: conntrack deletes an entry at once when an RST answers the SYN, so a
    # refused connect to a ClusterIP cannot be resolved afterwards; it keeps the ClusterIP.
    assert (failed.outcome, failed.original_remote_addr, failed.remote_addr) == (
        "refused",
        None,
        cluster_ip,
    )
    st = nat.stats
    assert (st.translated, st.translated_in_socket_netns, st.no_entry, st.errors) == (1, 0, 1, 0)


def test_socket_lb_connects_to_the_backend_with_nothing_to_translate(
    source: TcpConnSource, root_required: None
) -> None:
    """Cilium/Calico eBPF service handling: the socket is the backend's from connect() on."""
    with Cluster(NODES, pod_wiring="routed", kube_proxy="socket-lb") as cluster:
        client = cluster.add_pod("client", node="node-a1")
        server = cluster.add_pod("server", node="node-b1")
        port = free_port()
        svc = cluster.add_service("web", selector={"app": "server"}, port=80, target_port=port)
        host, target = cluster.backend_of(svc)
        assert (host, target) == (server.ip, port)
        proc = start_server(server, port, expect=10, reply=20, abort=False)
        result = run_client(client, host, target, send=10)
        server_result(proc)
        records, nat = collect_records(
            source,
            cluster,
            f"{svc.cluster_ip}/32",
            lambda e: port in (e.local_port, e.remote_port),
            lambda es: len(finals(es)) >= 2,
        )
    c = next(r for r in records if r.role == "client")
    assert (c.remote_addr, c.remote_port, c.original_remote_addr) == (server.ip, port, None)
    assert (c.local_port, c.bytes_sent, c.bytes_received) == (result["port"], 10, 20)
    assert nat.stats.lookups == 0  # not a ClusterIP: nothing asked of conntrack


V6_CLIENT = r"""
import json, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"c" * 300)
s.shutdown(socket.SHUT_WR)
got = 0
while data := s.recv(65536):
    got += len(data)
print(json.dumps({"port": s.getsockname()[1], "received": got}))
"""
V6_SERVER = r"""
import socket, sys
ls = socket.create_server(("::", int(sys.argv[1])), family=socket.AF_INET6)
print("listening", flush=True)
c, _ = ls.accept()
while c.recv(65536):
    pass
c.sendall(b"s" * 700)
c.close()
"""


@pytest.mark.parametrize("wiring", ["bridge", "routed"])
def test_dual_stack_service_nat_over_ipv6(
    source: TcpConnSource, root_required: None, wiring: str
) -> None:
    with Cluster(NODES, pod_wiring=wiring, dual_stack=True) as cluster:  # type: ignore[arg-type]
        client = cluster.add_pod("client", node="node-a1")
        server = cluster.add_pod("server", node="node-b1")
        assert client.ip6 is not None and server.ip6 is not None
        port = free_port()
        svc = cluster.add_service("web", selector={"app": "server"}, port=80, target_port=port)
        assert svc.cluster_ip6 is not None
        proc = server.start([sys.executable, "-c", V6_SERVER, str(port)])
        server.wait_listening(port, proc=proc)
        done = client.run([sys.executable, "-c", V6_CLIENT, svc.cluster_ip6, "80"])
        result = json.loads(done.stdout)
        proc.communicate(timeout=30)
        assert result["received"] == 700
        records, nat = collect_records(
            source,
            cluster,
            "fd00:10:96::/112",
            lambda e: port in (e.local_port, e.remote_port) or e.remote_addr == svc.cluster_ip6,
            lambda es: len(finals(es)) >= 2,
        )
    c = next(r for r in records if r.role == "client")
    s = next(r for r in records if r.role == "server")
    assert (c.family, c.original_remote_addr, c.original_remote_port) == (6, svc.cluster_ip6, 80)
    assert (c.remote_addr, c.remote_port, c.local_addr) == (server.ip6, port, client.ip6)
    assert (c.bytes_sent, c.bytes_received, c.pod_uid, s.pod_uid) == (
        300,
        700,
        client.uid,
        server.uid,
    )
    assert (s.remote_addr, s.remote_port) == (client.ip6, result["port"])
    assert nat.stats.translated == 1


def test_host_network_pods_are_named_by_cgroup_and_natted_on_output(
    source: TcpConnSource, root_required: None
) -> None:
    """A hostNetwork pod runs in the node's namespace with the node's address: its sockets are
    its pod's by cgroup, and its connects to a ClusterIP are rewritten on nat OUTPUT."""
    with Cluster(NODES, pod_wiring="routed", kube_proxy="nftables") as cluster:
        agent = cluster.add_pod("agent", node="node-a1", host_network=True)
        server = cluster.add_pod("server", node="node-b1")
        node_ip = cluster.nodes["node-a1"].internal_ip
        assert agent.ip == node_ip and agent.netns is None
        port = free_port()
        svc = cluster.add_service("web", selector={"app": "server"}, port=80, target_port=port)
        proc = server.start_server(port, reply_bytes=500)
        server.wait_listening(port, proc=proc)
        summary = agent.run_client(
            svc.cluster_ip, 80, count=3, send_bytes=200, expect_reply_bytes=500, source=node_ip
        )
        server.stop_server(proc)
        assert summary.completed == 3
        objects = cluster.objects()
        records, nat = collect_records(
            source,
            cluster,
            f"{svc.cluster_ip}/32",
            lambda e: port in (e.local_port, e.remote_port) or e.remote_addr == svc.cluster_ip,
            lambda es: len(finals(es)) >= 6,
        )
    [pod_obj] = [
        o for o in objects["items"] if o["kind"] == "Pod" and o["metadata"]["name"] == agent.name
    ]
    assert pod_obj["spec"]["hostNetwork"] is True and pod_obj["status"]["podIP"] == node_ip
    clients = [r for r in records if r.role == "client"]
    servers = [r for r in records if r.role == "server"]
    assert sorted(r.local_port for r in clients) == sorted(summary.local_ports)
    for r in clients:
        assert (r.pod_uid, r.container_id, r.local_addr) == (agent.uid, agent.container_id, node_ip)
        assert (r.remote_addr, r.remote_port, r.original_remote_addr) == (
            server.ip,
            port,
            svc.cluster_ip,
        )
        assert (r.bytes_sent, r.bytes_received) == (200, 500)
    assert len(servers) == 3 and {r.remote_addr for r in servers} == {node_ip}
    assert nat.stats.translated == 3
