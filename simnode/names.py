"""Names of every kernel object a simulated cluster creates.

Every name carries the run id, so two runs (two engineers' tests at once) never collide and a
crashed run's leftovers can be found again by ``sweep``. Interface names are limited to 15
characters by the kernel (IFNAMSIZ - 1), which is why the run id is short.
"""

from __future__ import annotations

import re
import secrets

PREFIX = "fs-"
RUN_ID_HEX = 6
# fs-<run id>-...: anything matching this was made by simnode.
OBJECT_RE = re.compile(rf"^{PREFIX}([0-9a-f]{{{RUN_ID_HEX}}})(?:-|$)")
IFNAME_MAX = 15


def new_run_id() -> str:
    """A random run id: 6 hex digits, 16.7 million values, enough for runs that overlap."""
    return secrets.token_hex(RUN_ID_HEX // 2)


def run_id_of(name: str) -> str | None:
    """The run id inside a simnode object name, or None for anyone else's object."""
    match = OBJECT_RE.match(name)
    return match.group(1) if match else None


def run_tag(run_id: str) -> str:
    """``fs-<run id>``: the netns prefix and the run's cgroup parent directory."""
    return f"{PREFIX}{run_id}"


def bridge_name(run_id: str) -> str:
    return f"{run_tag(run_id)}-br"


def host_veth_name(run_id: str, pod_index: int) -> str:
    name = f"{run_tag(run_id)}-p{pod_index}"
    if len(name) > IFNAME_MAX:
        raise ValueError(f"too many pods for interface name {name!r} (max {IFNAME_MAX} chars)")
    return name


def netns_name(run_id: str, pod_name: str) -> str:
    # Netns names are file names under /run/netns, so the pod name can be long.
    return f"{run_tag(run_id)}-{pod_name}"
