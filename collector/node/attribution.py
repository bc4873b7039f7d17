"""Name the local end of a connection: cgroup id -> cgroup path -> pod uid and container id.

The kernel reports the cgroup v2 id of the socket's owner, which is the inode number of the
cgroup's directory. :class:`CgroupResolver` walks the cgroup v2 tree once, maps inode numbers
to paths, and walks again (rate-limited) when it meets an id it does not know: new pods
appear all the time. :func:`parse_kubelet_path` is pure and knows the kubelet's layouts.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# The kubelet names a pod's cgroup kubepods[/<qos>]/pod<uid> (no QoS level for Guaranteed
# pods), below its --cgroup-root if one is set (kind sets /kubelet).
# cgroupfs driver: the name as a path, .../kubepods[/burstable|/besteffort]/pod<uid>/<container>.
_CGROUPFS_POD = re.compile(r"pod([0-9a-fA-F][0-9a-fA-F-]*)")
# systemd driver: one slice name holds the whole cgroup name, its parts joined with "-" after
# each part's "-" became "_", and every prefix is a parent slice, so the pod's slice names
# itself: [<root>-]kubepods[-burstable|-besteffort]-pod<uid with _>.slice. kind's is
# kubelet-kubepods-besteffort-pod<uid>.slice under kubelet.slice/kubelet-kubepods.slice/...
_SYSTEMD_POD = re.compile(
    r"(?:[^-]+-)*kubepods(?:-burstable|-besteffort)?-pod([0-9a-fA-F][0-9a-fA-F_]*)\.slice"
)
# The container's cgroup, the pod's child. systemd: runc's unit <prefix>-<id>.scope, the
# prefix being containerd's "cri-containerd", CRI-O's "crio" or dockerd's "docker";
# cgroupfs: <id> (containerd, dockerd) or crio-<id> (CRI-O).
_CONTAINER = re.compile(r"(?:(?:cri-containerd|crio|docker)-)?([0-9a-fA-F]{12,})(?:\.scope)?")
# CRI-O's conmon (crio-conmon-<id>[.scope], beside the container's cgroup with conmon_cgroup
# "pod") monitors one container but is not it: its processes belong to the pod and are
# attributed to the pod with no container. Naming the container would put the monitor's
# sockets on the workload.
_NOT_A_CONTAINER = re.compile(r"crio-conmon-.*")


@dataclass(frozen=True, slots=True)
class CgroupInfo:
    """What the cgroup says about a local socket's owner."""

    path: str | None  # relative to the cgroup v2 root, "/" for the root; None if unknown
    pod_uid: str | None  # None: a host process (or a cgroup we could not find)
    container_id: str | None


def parse_kubelet_path(path: str) -> tuple[str | None, str | None]:
    """``(pod_uid, container_id)`` from a cgroup path, ``(None, None)`` for host processes.

    Nothing above the kubelet's tree counts: it may start at the root or deeper (a
    --cgroup-root, a nested node, the simulated node's run directory), and a container may
    create sub-cgroups below its own. A cgroupfs ``pod<uid>`` must sit below a ``kubepods``
    component; a systemd pod slice carries ``kubepods`` in its own name.
    """
    parts = [p for p in path.split("/") if p]
    seen_kubepods = False
    for index, part in enumerate(parts):
        systemd = _SYSTEMD_POD.fullmatch(part)
        if systemd:
            uid = systemd.group(1).replace("_", "-")
        elif seen_kubepods and (cgroupfs := _CGROUPFS_POD.fullmatch(part)):
            uid = cgroupfs.group(1)
        else:
            seen_kubepods = seen_kubepods or part == "kubepods"
            continue
        return uid, _container_id(parts[index + 1] if index + 1 < len(parts) else None)
    return None, None


def _container_id(part: str | None) -> str | None:
    if part is None or _NOT_A_CONTAINER.fullmatch(part):
        return None
    found = _CONTAINER.fullmatch(part)
    return found.group(1) if found else None


@dataclass
class ResolverStats:
    walks: int = 0  # full walks of the cgroup tree
    misses: int = 0  # ids not found even after a walk (cgroup already removed)


def walk_cgroup_tree(root: Path) -> dict[int, str]:
    """Inode number -> path relative to ``root`` for every cgroup directory."""
    found: dict[int, str] = {os.stat(root).st_ino: "/"}
    stack: list[tuple[str, str]] = [(str(root), "")]
    while stack:
        directory, relative = stack.pop()
        try:
            entries = os.scandir(directory)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue  # removed while we walked, or not ours to read
        with entries:
            for entry in entries:
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    # d_ino from getdents: no stat() per directory.
                    inode = entry.inode()
                except OSError:
                    continue
                child = f"{relative}/{entry.name}"
                found[inode] = child
                stack.append((entry.path, child))
    return found


class CgroupResolver:
    """cgroup id -> :class:`CgroupInfo`, cached; walks the tree again on a miss.

    A miss walks the tree again at most once per ``min_walk_interval_s`` *per cgroup id*: a
    burst of events from a pod that is already gone must not turn into a burst of walks, but a
    pod created just after another pod's walk must still be found (a global limit turned its
    first records into "host").
    """

    def __init__(
        self,
        root: Path,
        min_walk_interval_s: float = 1.0,
        max_cached: int = 65536,
        walk: Callable[[Path], dict[int, str]] = walk_cgroup_tree,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._root = root
        self._walk = walk
        self._clock = clock
        self._min_interval = min_walk_interval_s
        self._max_cached = max_cached
        self._paths: dict[int, str] = {}
        self._infos: dict[int, CgroupInfo] = {}
        self._last_walk = float("-inf")
        self._missed: dict[int, float] = {}  # cgroup id -> when a walk last failed to find it
        self.stats = ResolverStats()

    def refresh(self) -> None:
        self._paths = self._walk(self._root)
        # A cgroup id is a 64-bit kernfs id, never reused, so a cached answer stays right after
        # its cgroup is removed (a pod's last connections close after the pod is gone). Only
        # forget removed cgroups when the cache grows past its bound.
        if len(self._infos) > self._max_cached:
            self._infos = {cid: i for cid, i in self._infos.items() if cid in self._paths}
        self._last_walk = self._clock()
        self.stats.walks += 1

    def resolve(self, cgroup_id: int) -> CgroupInfo:
        info = self._infos.get(cgroup_id)
        if info is not None:
            return info
        path = self._paths.get(cgroup_id)
        if path is None:
            now = self._clock()
            if now - self._missed.get(cgroup_id, float("-inf")) >= self._min_interval:
                self.refresh()
                path = self._paths.get(cgroup_id)
                if path is None:
                    if len(self._missed) >= self._max_cached:
                        self._missed.clear()
                    self._missed[cgroup_id] = now
        if path is None:
            self.stats.misses += 1
            return CgroupInfo(None, None, None)
        pod_uid, container_id = parse_kubelet_path(path)
        info = CgroupInfo(path, pod_uid, container_id)
        self._infos[cgroup_id] = info
        return info
