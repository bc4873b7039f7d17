"""Time-aware index of cluster addresses.

A pod holds its IPs over an interval ``[start_time_ns, end_time_ns or +inf)``. IPs are reused:
a lookup at time ``t`` returns the pod that held the IP at ``t``, so a new pod never inherits
the traffic of the pod that had its IP before. Node and ClusterIP addresses change rarely and
are kept in plain dicts.

Per IP the intervals are kept sorted by start; a lookup is a bisect (O(log n) in the number of
pods that ever held that IP, which is small).
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from enricher.join.labels import LabelSelection
from flowscope.records import Endpoint
from flowscope.records.metadata import NodeMeta, PodMeta, ServiceMeta

FOREVER_NS = 2**63 - 1

Resolved = PodMeta | NodeMeta | ServiceMeta


def canonical_ip(addr: str) -> str:
    """One spelling per address: IPv6 compressed, IPv4-mapped IPv6 as plain IPv4.

    IPv4 strings are returned untouched (they have only one spelling and are the hot path).
    """
    if ":" not in addr:
        return addr
    try:
        ip = ipaddress.IPv6Address(addr.split("%", 1)[0])
    except ValueError:
        return addr
    mapped = ip.ipv4_mapped
    return str(mapped) if mapped is not None else ip.compressed


@dataclass
class _IpHistory:
    """The pods that held one IP, sorted by start time (parallel lists for bisect)."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    uids: list[str] = field(default_factory=list)

    def add(self, start: int, end: int, uid: str) -> None:
        i = bisect.bisect_right(self.starts, start)
        self.starts.insert(i, start)
        self.ends.insert(i, end)
        self.uids.insert(i, uid)

    def remove(self, uid: str) -> None:
        while uid in self.uids:
            i = self.uids.index(uid)
            del self.starts[i], self.ends[i], self.uids[i]

    def at(self, t_ns: int, early_tolerance_ns: int) -> str | None:
        # The latest interval that started at or before t: a newer holder of the IP proves the
        # older one released it, even if the older one's end was never reported.
        i = bisect.bisect_right(self.starts, t_ns) - 1
        if i >= 0 and t_ns < self.ends[i]:
            return self.uids[i]
        # Nobody held the IP at t. A pod whose start is only slightly after t is the best
        # answer: start times come from another clock (the kubelet's) than t (the kernel's).
        nxt = i + 1
        if nxt < len(self.starts) and self.starts[nxt] - t_ns <= early_tolerance_ns:
            return self.uids[nxt]
        return None


class MetadataIndex:
    """Pods by uid, nodes by name, and every cluster address by time."""

    def __init__(self, early_tolerance_ns: int = 1_000_000_000) -> None:
        self.early_tolerance_ns = early_tolerance_ns
        # The labels ends carry: set before the first join (templates are built with it).
        self.labels = LabelSelection()
        self.pods: dict[str, PodMeta] = {}
        self.nodes: dict[str, NodeMeta] = {}
        self.services: dict[tuple[str, str], ServiceMeta] = {}
        self._pod_ips: dict[str, _IpHistory] = {}
        self._pod_indexed_ips: dict[str, list[str]] = {}
        self._node_ips: dict[str, str] = {}
        self._service_ips: dict[str, tuple[str, str]] = {}
        self._pods_by_node: dict[str, set[str]] = {}  # node name -> uids of its pods
        # Endpoints without address/port, per pod uid (and per node or service under keys with
        # a NUL, which no uid has): the join fills in the rest, far cheaper than building a
        # 17-field Endpoint per record. A pod's entry is dropped when it changes, a node's
        # and its pods' when the node changes (zones), a Service's when it changes.
        # ``fragments`` holds the same endpoints pre-encoded for the renderer and follows the
        # same rules.
        self.templates: dict[str, Endpoint] = {}
        self.fragments: dict[str, object] = {}
        # The renderer's shortcut for the commonest lookups, an IPv4 address held by one pod
        # or by no pod ever (a node, a Service, an unknown address): ip -> (from, until, the
        # fragment), valid for times in [from, until). Dropped per IP whenever that IP's
        # holders change, and with the fragments.
        self.ip_fragments: dict[str, tuple[int, int, object]] = {}

    # -- pods -------------------------------------------------------------------------------

    def upsert_pod(self, pod: PodMeta) -> None:
        self.remove_pod(pod.uid)
        self.pods[pod.uid] = pod
        if pod.node is not None:
            self._pods_by_node.setdefault(pod.node, set()).add(pod.uid)
        if pod.host_network:
            return  # its IP is the node's: lookups by IP name the node
        ips = [canonical_ip(ip) for ip in pod.ips]
        end = pod.end_time_ns if pod.end_time_ns is not None else FOREVER_NS
        for ip in ips:
            self._pod_ips.setdefault(ip, _IpHistory()).add(pod.start_time_ns, end, pod.uid)
            self.ip_fragments.pop(ip, None)
        self._pod_indexed_ips[pod.uid] = ips

    def remove_pod(self, uid: str) -> PodMeta | None:
        self._forget_pod_ends(uid)
        for ip in self._pod_indexed_ips.pop(uid, ()):
            history = self._pod_ips.get(ip)
            if history is None:
                continue
            history.remove(uid)
            if not history.starts:
                del self._pod_ips[ip]
        pod = self.pods.pop(uid, None)
        if pod is not None and pod.node is not None:
            on_node = self._pods_by_node.get(pod.node)
            if on_node is not None:
                on_node.discard(uid)
                if not on_node:
                    del self._pods_by_node[pod.node]
        return pod

    def pod(self, uid: str) -> PodMeta | None:
        return self.pods.get(uid)

    def sole_holder_span(self, ip: str) -> tuple[int, int] | None:
        """For an IP that one pod ever held (as far as the index knows): the times at which
        :meth:`lookup` names that pod, as ``[from, until)``. None when several pods held it."""
        history = self._pod_ips.get(ip)
        if history is None or len(history.starts) != 1:
            return None
        start, end = history.starts[0], history.ends[0]
        # _IpHistory.at: the holder from its start until its end, and slightly before its
        # start (clock skew tolerance) whatever its end says.
        return start - self.early_tolerance_ns, max(start, end)

    def ever_held_by_pod(self, ip: str) -> bool:
        """Whether some pod held ``ip`` (as far as the index knows): then who the IP names
        depends on the time; if not, it names the same node, service or nobody until the index
        changes (which drops :attr:`ip_fragments`)."""
        return ip in self._pod_ips

    def address_tables(self) -> tuple[Mapping[str, object], ...]:
        """The addresses pods ever held, nodes' and ClusterIPs, each a dict keyed by address
        (the index keeps these three objects for its lifetime): the C join loop checks them
        to know an address nobody in the cluster has."""
        return self._pod_ips, self._node_ips, self._service_ips

    def pod_at(self, ip: str, t_ns: int) -> PodMeta | None:
        history = self._pod_ips.get(ip)
        if history is None:
            return None
        uid = history.at(t_ns, self.early_tolerance_ns)
        return self.pods.get(uid) if uid is not None else None

    # -- nodes and services -----------------------------------------------------------------

    def upsert_node(self, node: NodeMeta) -> None:
        old = self._unindex_node(node.name)
        self.nodes[node.name] = node
        for ip in node.addresses:
            self._node_ips[canonical_ip(ip)] = node.name
        self._forget_node(node.name, [*node.addresses, *(old.addresses if old else ())])

    def remove_node(self, name: str) -> NodeMeta | None:
        old = self._unindex_node(name)
        if old is not None:
            self._forget_node(name, old.addresses)
        return old

    def _unindex_node(self, name: str) -> NodeMeta | None:
        old = self.nodes.pop(name, None)
        if old is not None:
            for ip in old.addresses:
                if self._node_ips.get(canonical_ip(ip)) == name:
                    del self._node_ips[canonical_ip(ip)]
        return old

    def _forget_node(self, name: str, addresses: list[str]) -> None:
        """Drop the ends built from a node's metadata: its own (node, host processes, sockets
        without a cgroup), its pods' (they carry its zone), and the shortcuts of its old and
        new addresses. The rest stay: dropping every end at each node or Service change made
        the join rebuild a large cluster's ends each time (the warm-up's pace, not the
        steady state's)."""
        for key in ("node\0" + name, "host\0" + name, "unresolved\0" + name):
            self.templates.pop(key, None)
            self.fragments.pop(key, None)
        for uid in self._pods_by_node.get(name, ()):
            self._forget_pod_ends(uid)
        self._forget_shortcuts(addresses)

    def _forget_pod_ends(self, uid: str) -> None:
        self.templates.pop(uid, None)
        self.fragments.pop(uid, None)
        self._forget_shortcuts(self._pod_indexed_ips.get(uid, ()))

    def _forget_shortcuts(self, addresses: Iterable[str]) -> None:
        """Drop the renderer's shortcuts of addresses whose holder may have changed."""
        for ip in addresses:
            self.ip_fragments.pop(canonical_ip(ip), None)

    def node(self, name: str | None) -> NodeMeta | None:
        return self.nodes.get(name) if name is not None else None

    def upsert_service(self, svc: ServiceMeta) -> None:
        key = (svc.namespace, svc.name)
        old = self._unindex_service(key)
        self.services[key] = svc
        for ip in svc.cluster_ips:
            self._service_ips[canonical_ip(ip)] = key
        self._forget_service(key, [*svc.cluster_ips, *(old.cluster_ips if old else ())])

    def remove_service(self, namespace: str, name: str) -> ServiceMeta | None:
        old = self._unindex_service((namespace, name))
        if old is not None:
            self._forget_service((namespace, name), old.cluster_ips)
        return old

    def _unindex_service(self, key: tuple[str, str]) -> ServiceMeta | None:
        old = self.services.pop(key, None)
        if old is not None:
            for ip in old.cluster_ips:
                if self._service_ips.get(canonical_ip(ip)) == key:
                    del self._service_ips[canonical_ip(ip)]
        return old

    def _forget_service(self, key: tuple[str, str], addresses: list[str]) -> None:
        """Drop the Service's own end and the shortcuts of its old and new ClusterIPs; pods'
        ends do not depend on it (a pod's Services come with the pod's metadata)."""
        template_key = f"svc\0{key[0]}\0{key[1]}"
        self.templates.pop(template_key, None)
        self.fragments.pop(template_key, None)
        self._forget_shortcuts(addresses)

    # -- the lookup -------------------------------------------------------------------------

    def lookup(self, addr: str, t_ns: int) -> Resolved | None:
        """Who had ``addr`` at ``t_ns``: a pod, else a node, else a Service's ClusterIP."""
        ip = addr if ":" not in addr else canonical_ip(addr)  # inlined: the hot path
        history = self._pod_ips.get(ip)
        if history is not None:
            uid = history.at(t_ns, self.early_tolerance_ns)
            if uid is not None:
                pod = self.pods.get(uid)
                if pod is not None:
                    return pod
        node_name = self._node_ips.get(ip)
        if node_name is not None:
            return self.nodes.get(node_name)
        svc_key = self._service_ips.get(ip)
        if svc_key is not None:
            return self.services.get(svc_key)
        return None
