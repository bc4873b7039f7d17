"""Bridge, network namespaces, veth pairs and routes, through iproute2.

Every pod is a netns whose ``eth0`` is one end of a veth pair. Two wirings, as CNI plugins do:

* ``bridge`` (the reference ``bridge`` plugin with ``isGateway``): the host end is a port of
  the run's bridge, which holds the gateway address (the pod block's ``.1``); the pod has its
  block's route on eth0 and a default route through the gateway. Pod-to-pod traffic on the
  bridge is L2 (and passes the root namespace's netfilter hooks through br_netfilter, as the
  kubelet requires); anything else, a ClusterIP included, is routed by the node.
* ``routed`` (Calico): the pod's address is a /32, its only routes go through the link-local
  gateway 169.254.1.1 that the host end answers for by proxy ARP, and the node has a /32 route
  per pod on its host veth. Every packet between pods is routed by the node.

Either way the node's root namespace forwards (``ip_forward``), which a Kubernetes node needs.
Each run takes a pod block no route of the host covers yet, so concurrent runs never share one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from simnode.commands import run, try_run
from simnode.errors import SimNodeError

NETNS_DIR = Path("/run/netns")


PodWiring = Literal["bridge", "routed"]
POD_WIRINGS: tuple[PodWiring, ...] = ("bridge", "routed")
CALICO_GATEWAY = "169.254.1.1"
# Calico gives every host veth this MAC, so the pod's IPv6 next hop is its EUI-64 link-local.
CALICO_MAC = "ee:ee:ee:ee:ee:ee"
CALICO_GATEWAY6 = "fe80::ecee:eeff:feee:eeee"


def create_bridge(name: str, *gateway_cidrs: str) -> None:
    run(["ip", "link", "add", name, "type", "bridge", "forward_delay", "0", "stp_state", "0"])
    for cidr in gateway_cidrs:
        # nodad: an IPv6 address is usable at once (no duplicate detection on our own bridge).
        extra = ["nodad"] if ":" in cidr else []
        run(["ip", "addr", "add", cidr, "dev", name, *extra])
    run(["ip", "link", "set", name, "up"])


def enable_forwarding(ipv6: bool) -> None:
    """A node routes for its pods; without it no packet reaches a ClusterIP's backend. IPv6
    forwarding only for dual-stack runs: it stops the host accepting router advertisements."""
    _write("/proc/sys/net/ipv4/ip_forward", "1")
    if ipv6:
        _write("/proc/sys/net/ipv6/conf/all/forwarding", "1")


def routed_prefixes() -> list[str]:
    """Every destination of the host's main and local tables (to pick free address blocks:
    the local table holds addresses, another run's node addresses among them)."""
    found: list[str] = []
    for table in ("main", "local"):
        shown = json.loads(run(["ip", "-j", "route", "show", "table", table]) or "[]")
        found += [str(r["dst"]) for r in shown if r.get("dst") not in (None, "default")]
    return found


def add_node_addresses(bridge: str, addresses: list[str]) -> None:
    """The nodes' InternalIPs, as /32s on the run's bridge (there is no dummy link driver on
    every kernel; the bridge goes with the run): pods reach them through the node's routing,
    and hostNetwork pods bind to them as their pod IP."""
    for address in addresses:
        run(["ip", "addr", "add", f"{address}/32", "dev", bridge])


def create_netns(name: str) -> None:
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def plug_pod(
    netns: str,
    host_veth: str,
    bridge: str,
    address_cidr: str,
    *,
    wiring: PodWiring = "bridge",
    gateway: str | None = None,
    address6_cidr: str | None = None,
    gateway6: str | None = None,
) -> str:
    """Create the veth pair and the pod's routes (see the module's docstring for ``wiring``).

    Returns eth0's MAC address.
    """
    run(["ip", "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
    address = address_cidr.split("/")[0]
    address6 = address6_cidr.split("/")[0] if address6_cidr else None
    if wiring == "bridge":
        run(["ip", "link", "set", host_veth, "master", bridge, "up"])
        run(["ip", "-n", netns, "addr", "add", address_cidr, "dev", "eth0"])
        if address6_cidr:
            run(["ip", "-n", netns, "addr", "add", address6_cidr, "dev", "eth0", "nodad"])
    else:
        _write(f"/proc/sys/net/ipv4/conf/{host_veth}/proxy_arp", "1")
        # The pod's IPv6 next hop is this end's link-local address: without duplicate address
        # detection it answers at once, not after ~1 s of tentative state (a pod's first UDP
        # packets, DNS queries among them, would be lost meanwhile).
        _write(f"/proc/sys/net/ipv6/conf/{host_veth}/accept_dad", "0")
        run(["ip", "link", "set", host_veth, "address", CALICO_MAC])
        run(["ip", "link", "set", host_veth, "up"])
        run(["ip", "-n", netns, "addr", "add", f"{address}/32", "dev", "eth0"])
        if address6:
            run(["ip", "-n", netns, "addr", "add", f"{address6}/128", "dev", "eth0", "nodad"])
    # A gratuitous ARP when eth0 comes up (as CNI plugins send): when the address was a
    # deleted pod's, the other pods' neighbour entries move to the new MAC at once instead of
    # blackholing connections to it until they expire.
    run(
        [
            "nsenter",
            f"--net={netns_path(netns)}",
            "--",
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/conf/eth0/arp_notify",
        ]
    )
    run(["ip", "-n", netns, "link", "set", "eth0", "up"])
    if wiring == "bridge":
        if gateway is not None:
            run(["ip", "-n", netns, "route", "add", "default", "via", gateway, "dev", "eth0"])
        if address6 and gateway6 is not None:
            run(
                ["ip", "-n", netns, "-6", "route", "add", "default", "via", gateway6, "dev", "eth0"]
            )
    else:
        run(["ip", "-n", netns, "route", "add", CALICO_GATEWAY, "dev", "eth0", "scope", "link"])
        run(["ip", "-n", netns, "route", "add", "default", "via", CALICO_GATEWAY, "dev", "eth0"])
        run(["ip", "route", "add", f"{address}/32", "dev", host_veth, "scope", "link"])
        if address6:
            run(
                [
                    "ip",
                    "-n",
                    netns,
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    CALICO_GATEWAY6,
                    "dev",
                    "eth0",
                ]
            )
            run(["ip", "-6", "route", "add", f"{address6}/128", "dev", host_veth])
    shown = json.loads(run(["ip", "-j", "-n", netns, "link", "show", "eth0"]))
    return str(shown[0]["address"])


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def netns_path(name: str) -> str:
    return str(NETNS_DIR / name)


def list_netns() -> list[str]:
    """Names under /run/netns (what ``ip netns list`` prints), without spawning ``ip``."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def list_links() -> list[str]:
    """Interface names in the host netns."""
    shown = json.loads(run(["ip", "-j", "link", "show"]))
    return sorted(str(link["ifname"]) for link in shown)


def netns_pids(name: str) -> list[int]:
    """Processes whose network namespace is this netns (they keep it alive after deletion)."""
    try:
        out = run(["ip", "netns", "pids", name])
    except SimNodeError:
        return []  # already gone
    return [int(p) for p in out.split()]


def delete_netns(name: str) -> str | None:
    """Delete a netns (its eth0 goes with it, and the veth peer too); None or the error."""
    if name not in list_netns():
        return None
    err = try_run(["ip", "netns", "del", name])
    return err if err is not None and name in list_netns() else None


def delete_link(name: str) -> str | None:
    if name not in list_links():
        return None
    err = try_run(["ip", "link", "del", name])
    # A veth disappears on its own (asynchronously) once its netns is gone: losing that race
    # is not a failure.
    return err if err is not None and name in list_links() else None
