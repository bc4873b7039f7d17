"""Service NAT: where a connection to a ClusterIP really went, from conntrack (pyroute2).

kube-proxy (iptables, nftables or IPVS mode) DNATs a pod's connection to a ClusterIP in the
*node's root* network namespace: nat PREROUTING as the packet leaves the pod's veth, OUTPUT for
host processes and hostNetwork pods. The socket keeps the ClusterIP as its peer, and the root
namespace's conntrack entry holds both: the original tuple (what the socket says) and the
reply tuple, whose source is the backend. So the lookup runs there first: the collector runs
in the node's namespace (``hostNetwork``), which is its own. A rule some other component puts
inside the pod's namespace (a sidecar proxy, a CNI that NATs in the pod) is found by a second
lookup in the socket's own namespace. Clusters with socket-level load balancing (Cilium's or
Calico's eBPF service handling) have no NAT to see: the socket is connected to the backend
already and the enricher names the Service from the backend's EndpointSlices.

Which namespace is the socket's: the BPF program reports the inode number of the socket's
netns (``sk->__sk_common.skc_net.net->ns.inum``), read from the socket itself when it closes,
so it is right even when the owning process has exited (short-lived clients do, before we
look). The inode is what ``stat /proc/<pid>/ns/net`` and ``stat /run/netns/<name>`` return, so
:class:`NetnsIndex` maps it to a path by scanning both, again when it meets an unknown one
(rate-limited).

Known limit: conntrack deletes an entry as soon as an RST answers the SYN, so a refused
connect to a ClusterIP has nothing left to look up; its record keeps the ClusterIP
(counted in ``no_entry``). Timed-out and established connections are resolved.

Only connections whose remote address is inside the configured service CIDRs are looked up:
a netlink round trip per connection would cost more than the whole rest of the pipeline.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from collector.tcp.events import TcpConnEvent

log = logging.getLogger("collector.node.nat")

IPPROTO_TCP = 6
IPPROTO_UDP = 17
RUN_NETNS = Path("/run/netns")
PROC = Path("/proc")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class NatStats:
    lookups: int = 0  # connections looked up (one or two conntrack queries each)
    translated: int = 0  # a DNAT was found (record carries both destinations)
    translated_in_socket_netns: int = 0  # ... of which inside the socket's own namespace
    not_translated: int = 0  # nothing found: no_entry + no_dnat
    no_entry: int = 0  # no conntrack entry anywhere (expired, or deleted at an RST)
    no_dnat: int = 0  # an entry, but not rewritten (e.g. a ClusterIP with no rule)
    netns_unknown: int = 0  # the socket's netns is gone: only the node's was looked up
    netns_denied: int = 0  # entering the socket's netns needs CAP_SYS_ADMIN: not looked up
    errors: int = 0  # netlink failures other than "no such entry"


def parse_cidrs(text: str) -> tuple[Network, ...]:
    """``"10.96.0.0/12,fd00:10:96::/112"`` -> networks; raises ValueError naming the bad one."""
    nets: list[Network] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not a CIDR such as 10.96.0.0/12: {exc}") from None
    return tuple(nets)


def scan_netns(proc: Path = PROC, run_netns: Path = RUN_NETNS) -> dict[int, str]:
    """netns inode -> a path that opens it; named namespaces first (they outlive processes)."""
    found: dict[int, str] = {}
    try:
        names = os.listdir(run_netns)
    except OSError:
        names = []
    for name in names:
        path = f"{run_netns}/{name}"
        try:
            found.setdefault(os.stat(path).st_ino, path)
        except OSError:
            continue
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        path = f"{entry.path}/ns/net"
        try:
            found.setdefault(os.stat(path).st_ino, path)
        except OSError:
            continue  # exited, or a kernel thread
    return found


class NetnsIndex:
    """netns inode -> path, rescanned on a miss at most every ``min_scan_interval_s``."""

    def __init__(
        self,
        scan: Callable[[], dict[int, str]] = scan_netns,
        min_scan_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scan = scan
        self._clock = clock
        self._min_interval = min_scan_interval_s
        self._paths: dict[int, str] = {}
        self._last_scan = float("-inf")
        self.scans = 0

    def path(self, inode: int) -> str | None:
        found = self._paths.get(inode)
        if found is None and self._clock() - self._last_scan >= self._min_interval:
            self._paths = self._scan()
            self._last_scan = self._clock()
            self.scans += 1
            found = self._paths.get(inode)
        return found


class ConntrackTable(Protocol):
    """One namespace's conntrack: the reply source of an original tuple, or None."""

    def reply_source(
        self, family: int, saddr: str, daddr: str, sport: int, dport: int, proto: int = ...
    ) -> tuple[str, int] | None: ...

    def close(self) -> None: ...


class PyrouteConntrack:
    """A ctnetlink socket bound to one network namespace (pyroute2 creates it in there)."""

    def __init__(self, netns_path: str | None) -> None:
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTSocket

        # flags=0: never create a namespace at that path if it has just disappeared.
        kwargs: dict[str, Any] = {} if netns_path is None else {"netns": netns_path, "flags": 0}
        self._sockets = {
            family: NFCTSocket(nfgen_family=family, **kwargs)
            for family in (socket.AF_INET, socket.AF_INET6)
        }

    def reply_source(
        self,
        family: int,
        saddr: str,
        daddr: str,
        sport: int,
        dport: int,
        proto: int = IPPROTO_TCP,
    ) -> tuple[str, int] | None:
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        af = socket.AF_INET if family == 4 else socket.AF_INET6
        orig = NFCTAttrTuple(
            family=af, saddr=saddr, daddr=daddr, proto=proto, sport=sport, dport=dport
        )
        try:
            msgs = self._sockets[af].entry("get", tuple_orig=orig)
        except NetlinkError as exc:
            if exc.code == 2:  # ENOENT: no entry (expired, or never tracked)
                return None
            raise
        for msg in msgs:
            reply = msg.get_attr("CTA_TUPLE_REPLY")
            if reply is None:
                continue
            ip = reply.get_attr("CTA_TUPLE_IP")
            l4 = reply.get_attr("CTA_TUPLE_PROTO")
            if ip is None or l4 is None:
                continue
            src = ip.get_attr("CTA_IP_V4_SRC") or ip.get_attr("CTA_IP_V6_SRC")
            port = l4.get_attr("CTA_PROTO_SRC_PORT")
            if src is not None and port is not None:
                return str(src), int(port)
        return None

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()


class NatResolver:
    """Resolves a client's ClusterIP destination to the backend, per network namespace.

    Keeps one conntrack socket per namespace seen recently (LRU, ``max_tables``).
    """

    def __init__(
        self,
        service_cidrs: Sequence[Network],
        netns: NetnsIndex | None = None,
        open_table: Callable[[str | None], ConntrackTable] = PyrouteConntrack,
        own_netns_inode: int | None = None,
        max_tables: int = 256,
    ) -> None:
        self._cidrs = tuple(service_cidrs)
        self._netns = netns or NetnsIndex()
        self._open = open_table
        self._own = own_netns_inode if own_netns_inode is not None else _own_netns_inode()
        self._tables: OrderedDict[int, ConntrackTable] = OrderedDict()
        self._max_tables = max_tables
        self._in_service = _membership(self._cidrs)
        # Without CAP_SYS_ADMIN (the shipped least-privilege set) no other namespace can be
        # entered: learnt at the first refusal, then only the node's table is asked.
        self._foreign_denied = False
        self.stats = NatStats()

    @property
    def cidrs(self) -> tuple[Network, ...]:
        """The Service ranges (the native encoder tests membership itself)."""
        return self._cidrs

    def in_service(self, address: str) -> bool:
        """Whether ``address`` is in a Service range (cached: called once per client record)."""
        return self._in_service(address)

    def wants(self, event: TcpConnEvent) -> bool:
        """Servers see the client's real address: only the connecting side can be DNATed."""
        return event.role != "server" and self._in_service(event.remote_addr)

    def resolve(self, event: TcpConnEvent) -> tuple[str, int] | None:
        """The backend (address, port) if conntrack says this connection was DNATed."""
        if not self.wants(event):
            return None
        return self.resolve_tuple(
            event.family,
            event.local_addr,
            event.remote_addr,
            event.local_port,
            event.remote_port,
            IPPROTO_TCP,
            event.netns_ino,
        )

    def resolve_tuple(
        self,
        family: int,
        local_addr: str,
        remote_addr: str,
        local_port: int,
        remote_port: int,
        proto: int,
        netns_ino: int | None = None,
    ) -> tuple[str, int] | None:
        """The backend of one original tuple: the node's namespace first (kube-proxy's), then
        the socket's own (``netns_ino``, when it is another one and still exists)."""
        self.stats.lookups += 1
        spaces = [self._own]
        if netns_ino is not None and netns_ino != self._own:
            spaces.append(netns_ino)
        entry_seen = False
        for inode in spaces:
            if inode != self._own and self._foreign_denied:
                self.stats.netns_denied += 1
                continue
            table = self._table(inode)
            if table is None:
                if not self._foreign_denied:
                    self.stats.netns_unknown += 1
                continue
            try:
                found = table.reply_source(
                    family, local_addr, remote_addr, local_port, remote_port, proto
                )
            except PermissionError:
                self._forget(inode)
                if inode == self._own:
                    raise
                self._deny_foreign()
                continue
            except Exception as exc:  # a netlink failure must not stop the pipeline
                self.stats.errors += 1
                log.debug("conntrack lookup failed: %s", exc)
                self._forget(inode)
                continue
            if found is None:
                continue
            entry_seen = True
            if found != (remote_addr, remote_port):
                self.stats.translated += 1
                if inode != self._own:
                    self.stats.translated_in_socket_netns += 1
                return found
        self.stats.not_translated += 1
        if entry_seen:
            self.stats.no_dnat += 1
        else:
            self.stats.no_entry += 1
        return None

    def _table(self, inode: int) -> ConntrackTable | None:
        table = self._tables.get(inode)
        if table is not None:
            self._tables.move_to_end(inode)
            return table
        if inode == self._own:
            path = None
        else:
            path = self._netns.path(inode)
            if path is None:
                return None
        try:
            table = self._open(path)
        except PermissionError:
            if path is None:
                raise
            self._deny_foreign()
            return None
        except Exception as exc:
            self.stats.errors += 1
            log.debug("cannot open conntrack in %s: %s", path, exc)
            return None
        self._tables[inode] = table
        while len(self._tables) > self._max_tables:
            _, old = self._tables.popitem(last=False)
            old.close()
        return table

    def _deny_foreign(self) -> None:
        self.stats.netns_denied += 1
        if not self._foreign_denied:
            self._foreign_denied = True
            log.warning(
                "conntrack inside pod network namespaces needs CAP_SYS_ADMIN (setns): only "
                "the node's table is looked up, which is where kube-proxy translates Services"
            )

    def _forget(self, inode: int) -> None:
        table = self._tables.pop(inode, None)
        if table is not None:
            try:
                table.close()
            except Exception as exc:
                log.debug("closing conntrack socket: %s", exc)

    def close(self) -> None:
        while self._tables:
            _, table = self._tables.popitem()
            table.close()


def _own_netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def _membership(cidrs: Sequence[Network]) -> Callable[[str], bool]:
    """A fast "is this address in one of the CIDRs" with a bounded cache of answers."""
    cache: dict[str, bool] = {}

    def contains(address: str) -> bool:
        known = cache.get(address)
        if known is None:
            ip = ipaddress.ip_address(address)
            known = any(ip.version == net.version and ip in net for net in cidrs)
            if len(cache) >= 65536:
                cache.clear()
            cache[address] = known
        return known

    return contains
