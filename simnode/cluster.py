"""The simulated cluster: pods as netns + veth + kubelet-shaped cgroups on this machine."""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import logging
import os
import secrets
import signal
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from simnode import cgroup, network, objects
from simnode.commands import require_tools, run
from simnode.errors import SimNodeError
from simnode.kubeproxy import KubeProxy, KubeProxyMode, ServicePortRule
from simnode.names import (
    bridge_name,
    host_veth_name,
    netns_name,
    new_run_id,
    run_tag,
)
from simnode.pod import Pod
from simnode.registry import DEFAULT_STATE_DIR, Registry
from simnode.spec import (
    Node,
    NodeSpec,
    PodMeta,
    ServiceMeta,
    ServicePort,
    default_nodes,
    k8s_suffix,
)
from simnode.sweep import remove_run, sweep

log = logging.getLogger(__name__)


def rfc3339_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Cluster:
    """A set of pods on this machine, with "nodes" in several zones as metadata.

    ``pod_wiring`` chooses how pods are plugged (``bridge`` or Calico-style ``routed``, see
    ``simnode.network``); ``kube_proxy`` how Services work (``nftables`` or ``iptables``
    rules in the root namespace, or ``socket-lb``, see ``simnode.kubeproxy``).

    Use it as a context manager: everything it created is removed on exit, also when the body
    raised, at interpreter exit, and on SIGTERM. ``sweep()`` removes crashed runs' leftovers.
    """

    def __init__(
        self,
        nodes: Sequence[NodeSpec] | None = None,
        *,
        cgroup_root: Path = cgroup.DEFAULT_ROOT,
        pod_cidr: str = "10.244.0.0/16",
        service_cidr: str = "10.96.0.0/16",
        node_cidr: str = "172.18.0.0/16",
        state_dir: Path = DEFAULT_STATE_DIR,
        sweep_stale: bool = True,
        handle_sigterm: bool = True,
        pod_wiring: network.PodWiring = "bridge",
        kube_proxy: KubeProxyMode = "nftables",
        dual_stack: bool = False,
        cgroup_driver: cgroup.CgroupDriver = "cgroupfs",
        runtime: cgroup.Runtime = "containerd",
    ) -> None:
        specs = tuple(nodes) if nodes is not None else default_nodes()
        if not specs:
            raise SimNodeError("a cluster needs at least one node")
        if len({s.name for s in specs}) != len(specs):
            raise SimNodeError(f"node names must be unique: {[s.name for s in specs]}")
        self.run_id = new_run_id()
        self.cgroup_root = cgroup_root
        self.cgroup_run_dir = cgroup_root / run_tag(self.run_id)
        if pod_wiring not in network.POD_WIRINGS:
            raise SimNodeError(f"unknown pod wiring {pod_wiring!r}; valid: {network.POD_WIRINGS}")
        self.pod_wiring = pod_wiring
        # Dual-stack: every pod and Service also has an IPv6 address, derived from its IPv4
        # one (the pod block's /24 maps to a /64 of fd00:10:244::/48, Services to fd00:10:96::).
        self.dual_stack = dual_stack
        self.pod_block6: ipaddress.IPv6Network | None = None
        self.gateway6: str | None = None
        self.kube_proxy = KubeProxy(self.run_id, kube_proxy)
        # How the kubelet's cgroup driver and the runtime name pod and container cgroups.
        self.cgroup_layout = cgroup.Layout(cgroup_driver, runtime)
        self.bridge = bridge_name(self.run_id)
        # The cluster's pod CIDR (metadata); this run's pods take one free /24 block of it.
        self.pod_network = ipaddress.IPv4Network(pod_cidr)
        self._pod_block_parent = self.pod_network
        self.pod_block = self.pod_network
        self.gateway = ""
        self._pod_ips: list[ipaddress.IPv4Address] = []
        self.service_network = ipaddress.IPv4Network(service_cidr)
        self._service_ips = _random_block_hosts(self.service_network)
        # A /24 of the node CIDR that no other run's addresses use (they are real, see start).
        node_block = _free_block(ipaddress.IPv4Network(node_cidr), network.routed_prefixes())
        node_ips = node_block.hosts()
        next(node_ips)  # .1 looks like a gateway; skip it
        self.nodes: dict[str, Node] = {
            s.name: Node(
                s.name,
                s.zone,
                s.region,
                s.internal_ip or str(next(node_ips)),
                str(uuid.uuid4()),
                dict(s.labels),
            )
            for s in specs
        }
        self.pods: dict[str, Pod] = {}
        # Pods playing hosts on the internet (add_internet_host): never in the objects.
        self._outside: set[str] = set()
        # Pods removed by delete_pod, oldest first; their metadata carries the deletion time.
        self.deleted_pods: list[Pod] = []
        # Host veth names are numbered by this counter, not by len(pods): pods come and go.
        self._pods_made = 0
        self.services: dict[str, ServiceMeta] = {}
        self.created = rfc3339_now()
        self._template_hashes: dict[tuple[str, str], str] = {}
        self._registry = Registry(state_dir)
        self._state_dir = state_dir
        self._sweep_stale = sweep_stale
        self._handle_sigterm = handle_sigterm
        self._old_sigterm: Any = None
        self._lock = threading.Lock()
        self._started = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(raise_errors=exc is None)

    def start(self) -> None:
        if self._started:
            raise SimNodeError("cluster already started")
        require_tools()
        cgroup.check_root(self.cgroup_root)
        if self._sweep_stale:
            for run_id, problems in sweep(self.cgroup_root, self._state_dir).items():
                log.warning(
                    "swept stale simnode run %s%s",
                    run_id,
                    f" with problems: {problems}" if problems else "",
                )
        self._started = True
        # Registered before any kernel object exists, so sweep never takes a live run for dead.
        self._registry.register(self.run_id, self.cgroup_root)
        atexit.register(self._close_at_exit)
        self._install_sigterm()
        try:
            self.pod_block = _free_block(self._pod_block_parent, network.routed_prefixes())
            hosts = list(self.pod_block.hosts())
            self.gateway = str(hosts[0])  # .1, as the bridge plugin and host-local IPAM do
            self._pod_ips = hosts[1:]
            gateways = [f"{self.gateway}/{self.pod_block.prefixlen}"]
            if self.dual_stack:
                self.pod_block6 = _ipv6_block(self.pod_block)
                self.gateway6 = str(self.pod_block6.network_address + 1)
                gateways.append(f"{self.gateway6}/64")
            network.enable_forwarding(self.dual_stack)
            cgroup.create(self.cgroup_run_dir)
            network.create_bridge(self.bridge, *(gateways if self.pod_wiring == "bridge" else ()))
            network.add_node_addresses(self.bridge, [n.internal_ip for n in self.nodes.values()])
        except BaseException:
            self.close(raise_errors=False)
            raise

    def close(self, *, raise_errors: bool = True) -> None:
        """Kill every process and remove every object of this run. Safe to call twice."""
        with self._lock:
            if self._closed or not self._started:
                self._closed = True
                return
            self._closed = True
        atexit.unregister(self._close_at_exit)
        self._restore_sigterm()
        for pod in self.pods.values():
            pod.kill_all()
        problems = remove_run(
            self.run_id, self.cgroup_root, [p.netns for p in self.pods.values() if p.netns]
        )
        for pod in self.pods.values():
            pod.reap()
        if problems:
            log.error("simnode run %s teardown problems: %s", self.run_id, problems)
            if raise_errors:
                raise SimNodeError(f"teardown of run {self.run_id} left: {problems}")
        else:
            self._registry.unregister(self.run_id)

    def _close_at_exit(self) -> None:
        self.close(raise_errors=False)

    def _install_sigterm(self) -> None:
        if not self._handle_sigterm or threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # someone else owns SIGTERM; atexit still runs if they exit normally
        self._old_sigterm = signal.SIG_DFL

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            # SystemExit unwinds the with-block, so teardown runs on the ordinary path.
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, on_sigterm)

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None and (
            threading.current_thread() is threading.main_thread()
        ):
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    # -- building ----------------------------------------------------------------------------

    def add_pod(
        self,
        deployment: str | None,
        *,
        node: str,
        name: str | None = None,
        namespace: str = "default",
        labels: Mapping[str, str] | None = None,
        qos: cgroup.QosClass = "besteffort",
        container: str | None = None,
        image: str = "simnode/python:latest",
        ip: str | None = None,
        host_network: bool = False,
    ) -> Pod:
        """Create a running pod on ``node``, owned by ReplicaSet ``<deployment>-<hash>``.

        ``deployment=None`` makes a bare pod (no owner); then ``name`` is required. Labels
        default to ``{"app": deployment}``; ``pod-template-hash`` is added for deployments.
        ``ip`` asks for a given address of the pod CIDR (e.g. one a deleted pod released, to
        reuse it); it must not be held by a live pod. By default the next free one is taken.
        """
        if not self._started or self._closed:
            raise SimNodeError("add_pod needs a started cluster (use it as a context manager)")
        if node not in self.nodes:
            raise SimNodeError(f"unknown node {node!r}; nodes are {sorted(self.nodes)}")
        if qos not in cgroup.QOS_CLASSES:
            raise SimNodeError(f"unknown qos {qos!r}; valid: {cgroup.QOS_CLASSES}")
        template_hash = None
        pod_labels = dict(labels) if labels is not None else {}
        if deployment is not None:
            template_hash = self._template_hashes.setdefault(
                (namespace, deployment), k8s_suffix(10)
            )
            pod_labels.setdefault("app", deployment)
            pod_labels[objects.TEMPLATE_HASH_LABEL] = template_hash
            name = name or f"{deployment}-{template_hash}-{k8s_suffix(5)}"
        elif name is None:
            raise SimNodeError("a bare pod (deployment=None) needs a name")
        if name in self.pods:
            raise SimNodeError(f"pod {name!r} exists already")
        if host_network:
            # The kubelet starts it in the node's namespace: the node's address is its own.
            pod_ip = self.nodes[node].internal_ip
        elif ip is not None:
            live = {p.ip for p in self.pods.values() if not p.meta.host_network}
            pod_ip = claim_ip(self._pod_ips, ip, self.pod_block, live)
        else:
            pod_ip = str(self._next_ip(self._pod_ips, "pod"))
        dual = self.pod_block6 is not None and not host_network
        meta = PodMeta(
            name=name,
            namespace=namespace,
            uid=str(uuid.uuid4()),
            labels=pod_labels,
            node=self.nodes[node],
            ip=pod_ip,
            container_name=container or deployment or name,
            container_id=secrets.token_hex(32),
            image=image,
            qos=qos,
            start_time=rfc3339_now(),
            deployment=deployment,
            template_hash=template_hash,
            ip6=_ipv6_of(pod_ip, self.pod_block6) if dual and self.pod_block6 else None,
            runtime=self.cgroup_layout.runtime,
            host_network=host_network,
        )
        index = self._pods_made
        self._pods_made += 1
        layout = self.cgroup_layout
        pod_cgroup = layout.pod_dir(self.cgroup_run_dir, qos, meta.uid)
        pod = Pod(
            meta,
            netns=None if host_network else netns_name(self.run_id, name),
            host_veth=None if host_network else host_veth_name(self.run_id, index),
            cgroup_root=self.cgroup_root,
            cgroup_dir=layout.container_dir(pod_cgroup, meta.container_id),
            monitor_cgroup_dir=layout.monitor_dir(pod_cgroup, meta.container_id),
        )
        # Registered first so that close() removes it even if creation fails half-way.
        self.pods[name] = pod
        cgroup.create(pod.cgroup_dir)
        if pod.monitor_cgroup_dir is not None:
            cgroup.create(pod.monitor_cgroup_dir)
        if pod.netns is None or pod.host_veth is None:
            self._sync_services()
            return pod
        network.create_netns(pod.netns)
        pod.mac = network.plug_pod(
            pod.netns,
            pod.host_veth,
            self.bridge,
            f"{meta.ip}/{self.pod_block.prefixlen}",
            wiring=self.pod_wiring,
            gateway=self.gateway,
            address6_cidr=f"{meta.ip6}/64" if meta.ip6 else None,
            gateway6=self.gateway6,
        )
        self._sync_services()
        return pod

    def add_internet_host(self, name: str, *, node: str, count: int) -> tuple[Pod, list[str]]:
        """A host "on the internet": a pod the metadata never lists (``objects`` leaves it
        out), answering on ``count`` global addresses routed to it from the node, as a NAT
        gateway would deliver them. Returns the pod and its addresses.

        The addresses come from 192.88.99.0/24, the retired 6to4 relay anycast block (RFC
        7526): global (``ipaddress`` and the enricher class them internet) yet unused, so
        routing them here takes nothing real away. Their routes go with the bridge or veth.
        """
        pod = self.add_pod(None, node=node, name=name, namespace="internet")
        self._outside.add(name)
        taken = set(network.routed_prefixes())
        # In random order: another run may take addresses between our look and our add.
        free = [str(a) for a in _random_block_hosts(INTERNET_BLOCK) if str(a) not in taken]
        secrets.SystemRandom().shuffle(free)
        if len(free) < count:
            raise SimNodeError(f"only {len(free)} free addresses in {INTERNET_BLOCK}")
        addrs = free[:count]
        assert pod.netns is not None and pod.host_veth is not None
        for addr in addrs:
            run(["ip", "-n", pod.netns, "addr", "add", f"{addr}/32", "dev", "eth0"])
            if self.pod_wiring == "bridge":
                run(["ip", "route", "add", f"{addr}/32", "via", pod.ip, "dev", self.bridge])
            else:
                run(["ip", "route", "add", f"{addr}/32", "dev", pod.host_veth])
        return pod, addrs

    def delete_pod(self, name: str) -> Pod:
        """Delete a pod as the kubelet would: kill its processes, remove its netns (eth0 and
        the veth pair go with it) and its cgroups, and release its IP for reuse.

        The pod moves to ``deleted_pods`` with ``meta.deletion_time`` set; ``objects(
        include_deleted=True)`` still lists it as a terminating pod. Returns it.
        """
        if not self._started or self._closed:
            raise SimNodeError("delete_pod needs a started cluster")
        pod = self.pods.get(name)
        if pod is None:
            raise SimNodeError(f"no live pod {name!r}; pods are {sorted(self.pods)}")
        pod.kill_all()
        pod_cgroup = pod.cgroup_dir.parent  # .../pod<uid>: the container dir's parent
        cgroup.kill_tree(pod_cgroup)
        problems: list[str] = []
        if not cgroup.wait_empty(pod_cgroup, 5.0):
            problems.append(f"processes still in {pod_cgroup}: {cgroup.procs(pod_cgroup)}")
        if pod.netns is not None and pod.host_veth is not None:
            # A process that entered the netns some other way would keep it (and its IP) alive.
            for pid in network.netns_pids(pod.netns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if (err := network.delete_netns(pod.netns)) is not None:
                problems.append(err)
            if (err := network.delete_link(pod.host_veth)) is not None:
                problems.append(err)
        problems += cgroup.remove_tree(pod_cgroup)
        pod.reap()
        if problems:
            # The pod stays in ``pods`` so that close() tries again.
            raise SimNodeError(f"deleting pod {name!r} left: {problems}")
        del self.pods[name]
        pod.meta = replace(pod.meta, deletion_time=rfc3339_now())
        self.deleted_pods.append(pod)
        # Back of the queue: like a real IPAM, a released address is the last to be reused.
        if not pod.meta.host_network:
            self._pod_ips.append(ipaddress.IPv4Address(pod.ip))
        self._sync_services()
        return pod

    def add_service(
        self,
        name: str,
        *,
        selector: Mapping[str, str],
        port: int,
        target_port: int | None = None,
        namespace: str = "default",
        port_name: str = "",
        protocols: Sequence[str] = ("TCP",),
        cluster_ip: str | None = None,
    ) -> ServiceMeta:
        """A ClusterIP Service and its rules, as kube-proxy programs them (``kube_proxy``).

        One port, over each of ``protocols`` (CoreDNS's Service has 53 over UDP and TCP).
        ``cluster_ip`` asks for a given address (e.g. the cluster DNS's); it must be free.
        """
        if name in self.services:
            raise SimNodeError(f"service {name!r} exists already")
        if cluster_ip is None:
            ip = str(self._next_ip(self._service_ips, "service"))
        elif any(s.cluster_ip == cluster_ip for s in self.services.values()):
            raise SimNodeError(f"ClusterIP {cluster_ip} is taken")
        else:
            ip = cluster_ip
            with contextlib.suppress(ValueError):
                self._service_ips.remove(ipaddress.IPv4Address(ip))
        svc = ServiceMeta(
            name=name,
            namespace=namespace,
            uid=str(uuid.uuid4()),
            cluster_ip=ip,
            cluster_ip6=_ipv6_service_ip(ip) if self.dual_stack else None,
            selector=dict(selector),
            ports=tuple(
                ServicePort(port, target_port or port, port_name, proto.upper())
                for proto in protocols
            ),
        )
        self.services[name] = svc
        self._sync_services()
        return svc

    def endpoints(self, svc: ServiceMeta) -> list[Pod]:
        """The live pods a Service selects, in creation order (its EndpointSlice's)."""
        return [p for p in self.pods.values() if svc.selects(p.meta)]

    def backend_of(self, svc: ServiceMeta) -> tuple[str, int]:
        """Where a client's connect() to the Service lands under ``socket-lb``: the socket-level
        balancer picks an endpoint before any packet exists (here: the first one)."""
        pods = self.endpoints(svc)
        if not pods:
            raise SimNodeError(f"service {svc.name!r} has no endpoints")
        return pods[0].ip, svc.ports[0].target_port

    def _sync_services(self) -> None:
        if not self.services:
            return
        rules = [
            ServicePortRule(
                name=f"{svc.namespace}/{svc.name}:{p.port}",
                cluster_ip=cluster_ip,
                protocol=p.protocol.lower(),
                port=p.port,
                endpoints=tuple(
                    (pod.ip if family == 4 else str(pod.meta.ip6), p.target_port)
                    for pod in self.endpoints(svc)
                    if family == 4 or pod.meta.ip6 is not None
                ),
            )
            for svc in self.services.values()
            for family, cluster_ip in zip((4, 6), svc.cluster_ips, strict=False)
            for p in svc.ports
        ]
        self.kube_proxy.sync(rules)

    @staticmethod
    def _next_ip(hosts: list[ipaddress.IPv4Address], what: str) -> ipaddress.IPv4Address:
        if not hosts:
            raise SimNodeError(f"out of {what} addresses")
        return hosts.pop(0)

    # -- metadata ----------------------------------------------------------------------------

    def pod(self, name: str) -> Pod:
        return self.pods[name]

    def objects(
        self, *, include_workloads: bool = True, include_deleted: bool = False
    ) -> dict[str, Any]:
        """The cluster as a ``kind: List`` of Kubernetes objects (see ``simnode.objects``).

        ``include_deleted`` also lists the pods ``delete_pod`` removed, as terminating pods
        (with their ``deletionTimestamp``): what a publisher needs to end their IP intervals.
        """
        deleted = [p.meta for p in self.deleted_pods] if include_deleted else []
        return objects.cluster_objects(
            list(self.nodes.values()),
            deleted + [p.meta for n, p in self.pods.items() if n not in self._outside],
            list(self.services.values()),
            created=self.created,
            salt=self.run_id,
            include_workloads=include_workloads,
        )

    def write_objects(
        self, path: Path, *, include_workloads: bool = True, include_deleted: bool = False
    ) -> Path:
        """Write the objects as YAML (what ``kubectl get -o yaml`` prints); returns ``path``.

        ``include_workloads=False`` leaves out Deployments, ReplicaSets and EndpointSlices
        (Pods, Nodes and Services only); ``include_deleted`` see ``objects``.
        """
        return objects.write_yaml(
            self.objects(include_workloads=include_workloads, include_deleted=include_deleted),
            path,
        )


INTERNET_BLOCK = ipaddress.IPv4Network("192.88.99.0/24")


def claim_ip(
    free: list[ipaddress.IPv4Address],
    ip: str,
    network: ipaddress.IPv4Network,
    in_use: set[str],
) -> str:
    """Take ``ip`` for a new pod: it must be a host address of ``network`` that no live pod
    holds. It leaves ``free`` (if there) so that no later pod gets it by default."""
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError as exc:
        raise SimNodeError(f"not an IPv4 address: {ip!r}") from exc
    if addr not in network or addr in (network.network_address, network.broadcast_address):
        raise SimNodeError(f"{ip} is not a host address of the pod network {network}")
    if str(addr) in in_use:
        raise SimNodeError(f"{ip} is held by a live pod; delete it first")
    if addr in free:
        free.remove(addr)
    return str(addr)


def _ipv6_block(block: ipaddress.IPv4Network) -> ipaddress.IPv6Network:
    third = int(block.network_address) >> 8 & 0xFF
    return ipaddress.IPv6Network(f"fd00:10:244:{third:x}::/64")


def _ipv6_of(ip: str, block6: ipaddress.IPv6Network) -> str:
    return str(block6.network_address + (int(ipaddress.IPv4Address(ip)) & 0xFF))


def _ipv6_service_ip(ip: str) -> str:
    return str(ipaddress.IPv6Address("fd00:10:96::") + (int(ipaddress.IPv4Address(ip)) & 0xFFFF))


def _free_block(net: ipaddress.IPv4Network, routed: Sequence[str]) -> ipaddress.IPv4Network:
    """A random /24 of ``net`` that no route of the host overlaps (another run's pods)."""
    if net.prefixlen >= 24:
        return net
    taken = []
    for dst in routed:
        with contextlib.suppress(ValueError):
            taken.append(ipaddress.ip_network(dst, strict=False))
    blocks = [
        b
        for b in net.subnets(new_prefix=24)
        if not any(b.version == t.version and b.overlaps(t) for t in taken)
    ]
    if not blocks:
        raise SimNodeError(f"every /24 of the pod CIDR {net} is routed already")
    return secrets.choice(blocks)


def _random_block_hosts(net: ipaddress.IPv4Network) -> list[ipaddress.IPv4Address]:
    """Addresses .2-.254 of a random /24 inside ``net`` (the whole net if smaller).

    A random block per run keeps two concurrent runs' pods on different IPs, which helps
    whoever reads a shared collector's output; the kernel would not mind either way.
    """
    if net.prefixlen >= 24:
        return [ip for ip in net.hosts() if int(ip) - int(net.network_address) >= 2]
    blocks = list(net.subnets(new_prefix=24))
    block = secrets.choice(blocks)
    return [ip for ip in block.hosts() if int(ip) - int(block.network_address) >= 2]
