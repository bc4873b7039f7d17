"""What a simulated cluster is made of, as plain data (no kernel objects here)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from simnode.cgroup import QosClass, Runtime

# Kubernetes' name-suffix alphabet (k8s.io/apimachinery/pkg/util/rand): no vowels, no 0/1/3.
K8S_ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"


def k8s_suffix(length: int) -> str:
    """A random suffix as Kubernetes makes them (pod-template-hash: 10, pod name: 5)."""
    return "".join(secrets.choice(K8S_ALPHANUMS) for _ in range(length))


@dataclass(frozen=True)
class NodeSpec:
    """A node: metadata only, every pod really runs on this machine."""

    name: str
    zone: str
    region: str = "region-1"
    internal_ip: str | None = None  # None: the cluster assigns one from its node CIDR
    # More node labels (a rack, a node pool), beside the zone, region and host name ones.
    labels: Mapping[str, str] = field(default_factory=dict)


def default_nodes() -> tuple[NodeSpec, ...]:
    """Three nodes in two zones of one region: enough for same-zone and cross-zone pairs."""
    return (
        NodeSpec("node-a1", zone="zone-a"),
        NodeSpec("node-a2", zone="zone-a"),
        NodeSpec("node-b1", zone="zone-b"),
    )


@dataclass(frozen=True)
class Node:
    name: str
    zone: str
    region: str
    internal_ip: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PodMeta:
    """Everything the Kubernetes objects say about one pod."""

    name: str
    namespace: str
    uid: str
    labels: dict[str, str]
    node: Node
    ip: str
    container_name: str
    container_id: str  # 64 hex digits, in the container cgroup's name (see cgroup.Layout)
    image: str
    qos: QosClass
    start_time: str  # RFC 3339, UTC, seconds
    deployment: str | None  # None: a bare pod with no owner
    template_hash: str | None
    # RFC 3339, UTC, seconds: set once the pod was deleted (Cluster.delete_pod). A deleted pod
    # still written out is a terminating one, as the API server shows it until it is gone.
    deletion_time: str | None = None
    ip6: str | None = None  # the IPv6 address of a dual-stack pod
    # The runtime that "runs" the container: the scheme of containerStatuses[].containerID.
    runtime: Runtime = "containerd"
    # In the node's network namespace: its IP is the node's (status.podIP == hostIP).
    host_network: bool = False

    @property
    def ips(self) -> tuple[str, ...]:
        """Every address, IPv4 first (``status.podIPs``)."""
        return (self.ip,) if self.ip6 is None else (self.ip, self.ip6)

    @property
    def replicaset(self) -> str | None:
        if self.deployment is None or self.template_hash is None:
            return None
        return f"{self.deployment}-{self.template_hash}"


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True)
class ServiceMeta:
    name: str
    namespace: str
    uid: str
    cluster_ip: str
    selector: dict[str, str]
    ports: tuple[ServicePort, ...]
    cluster_ip6: str | None = None  # a dual-stack Service's IPv6 ClusterIP

    @property
    def cluster_ips(self) -> tuple[str, ...]:
        return (
            (self.cluster_ip,) if self.cluster_ip6 is None else (self.cluster_ip, self.cluster_ip6)
        )

    def selects(self, pod: PodMeta) -> bool:
        return (
            bool(self.selector)
            and pod.namespace == self.namespace
            and all(pod.labels.get(k) == v for k, v in self.selector.items())
        )
