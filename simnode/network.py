"""Bridge, network namespaces and veth pairs, through iproute2.

Every pod is a netns whose ``eth0`` is one end of a veth pair; the other end is a port of the
run's bridge. The host has no address on the bridge: pods reach each other over L2 only, so
two runs with the same pod CIDR never fight over a host route.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from simnode.commands import run, try_run
from simnode.errors import SimNodeError

NETNS_DIR = Path("/run/netns")


def create_bridge(name: str) -> None:
    run(["ip", "link", "add", name, "type", "bridge", "forward_delay", "0", "stp_state", "0"])
    run(["ip", "link", "set", name, "up"])


def create_netns(name: str) -> None:
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def plug_pod(netns: str, host_veth: str, bridge: str, address_cidr: str) -> str:
    """Create the veth pair: eth0 (with the pod address) in the netns, the peer on the bridge.

    Returns eth0's MAC address.
    """
    run(["ip", "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
    run(["ip", "link", "set", host_veth, "master", bridge, "up"])
    run(["ip", "-n", netns, "addr", "add", address_cidr, "dev", "eth0"])
    # A gratuitous ARP when eth0 comes up (as CNI plugins send): when the address was a
    # deleted pod's, the other pods' neighbour entries move to the new MAC at once instead of
    # blackholing connections to it until they expire.
    run(["nsenter", f"--net={netns_path(netns)}", "--", "sh", "-c",
         "echo 1 > /proc/sys/net/ipv4/conf/eth0/arp_notify"])
    run(["ip", "-n", netns, "link", "set", "eth0", "up"])
    shown = json.loads(run(["ip", "-j", "-n", netns, "link", "show", "eth0"]))
    return str(shown[0]["address"])


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
