"""cgroup v2 directories shaped like the kubelet's and the container runtime's.

Two things vary between real nodes, and the rig models both (:class:`Layout`):

- the kubelet's **cgroup driver** (pkg/kubelet/cm/cgroup_manager_linux.go). A pod's cgroup
  name is ``kubepods[/<qos>]/pod<uid>`` (no QoS level for Guaranteed pods). ``cgroupfs``
  joins it as a path; ``systemd`` (``CgroupName.ToSystemd``) replaces ``-`` with ``_`` in
  each part, joins the parts with ``-`` into one slice name and expands it so that every
  prefix is a parent slice: ``kubepods.slice/kubepods-burstable.slice/
  kubepods-burstable-pod<uid with _>.slice``.
- the **runtime**, which names the container's cgroup below the pod's. With systemd each
  asks runc for ``<slice>:<prefix>:<id>``, which becomes the unit ``<prefix>-<id>.scope``:
  containerd's CRI plugin uses ``cri-containerd`` (getCgroupsPath), CRI-O ``crio``
  (cgmgr.CrioPrefix), dockerd ``docker`` (WithCgroups). With cgroupfs containerd and
  dockerd use ``<parent>/<id>``, CRI-O ``<parent>/crio-<id>``. CRI-O also puts the
  container's conmon monitor in the pod's cgroup (``conmon_cgroup = "pod"``, what Kubernetes
  deployments set): ``crio-conmon-<id>.scope`` (systemd) or ``crio-conmon-<id>`` (cgroupfs).

simnode puts that tree under one run-specific parent (``<root>/fs-<run id>/kubepods...``) so
that killing and removing a whole run is one subtree; on a real node it starts at the root.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from simnode.errors import SimNodeError

DEFAULT_ROOT = Path("/sys/fs/cgroup/unified")
QosClass = Literal["guaranteed", "burstable", "besteffort"]
QOS_CLASSES: tuple[QosClass, ...] = ("guaranteed", "burstable", "besteffort")
CgroupDriver = Literal["cgroupfs", "systemd"]
CGROUP_DRIVERS: tuple[CgroupDriver, ...] = ("cgroupfs", "systemd")
Runtime = Literal["containerd", "crio", "docker"]
RUNTIMES: tuple[Runtime, ...] = ("containerd", "crio", "docker")


def check_root(root: Path) -> None:
    """Fail loudly unless ``root`` is a writable cgroup v2 hierarchy."""
    if not (root / "cgroup.controllers").is_file():
        raise SimNodeError(
            f"{root} is not a cgroup v2 mount (no cgroup.controllers); pass the cgroup v2 root "
            "(e.g. /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a hybrid one)"
        )
    if not os.access(root, os.W_OK):
        raise SimNodeError(f"{root} is not writable: simnode must run as root")


# The scope prefix each runtime passes to runc with the systemd driver, and the prefix of the
# container's directory name with cgroupfs (see the module docstring for where each is set).
_SCOPE_PREFIX: dict[Runtime, str] = {
    "containerd": "cri-containerd",
    "crio": "crio",
    "docker": "docker",
}
_CGROUPFS_PREFIX: dict[Runtime, str] = {"containerd": "", "crio": "crio-", "docker": ""}


def _kubelet_name(qos: QosClass, pod_uid: str) -> list[str]:
    # Guaranteed pods sit directly under kubepods: the kubelet has no QoS level for them.
    return ["kubepods", *([] if qos == "guaranteed" else [qos]), f"pod{pod_uid}"]


def pod_dir(run_dir: Path, qos: QosClass, pod_uid: str, driver: CgroupDriver = "cgroupfs") -> Path:
    """The pod's cgroup as the kubelet makes it with ``driver``, below ``run_dir``."""
    parts = _kubelet_name(qos, pod_uid)
    if driver == "cgroupfs":
        return run_dir.joinpath(*parts)
    # CgroupName.ToSystemd: "-" would be a level in a slice name, so it becomes "_"; then
    # ExpandSlice turns "a-b-c.slice" into a.slice/a-b.slice/a-b-c.slice.
    escaped = [p.replace("-", "_") for p in parts]
    return run_dir.joinpath(*("-".join(escaped[: i + 1]) + ".slice" for i in range(len(parts))))


@dataclass(frozen=True)
class Layout:
    """Where a pod's and a container's cgroups go for one (cgroup driver, runtime) pair."""

    driver: CgroupDriver = "cgroupfs"
    runtime: Runtime = "containerd"

    def __post_init__(self) -> None:
        if self.driver not in CGROUP_DRIVERS:
            raise SimNodeError(f"unknown cgroup driver {self.driver!r}; valid: {CGROUP_DRIVERS}")
        if self.runtime not in RUNTIMES:
            raise SimNodeError(f"unknown runtime {self.runtime!r}; valid: {RUNTIMES}")

    def pod_dir(self, run_dir: Path, qos: QosClass, pod_uid: str) -> Path:
        return pod_dir(run_dir, qos, pod_uid, self.driver)

    def container_dir(self, pod: Path, container_id: str) -> Path:
        return pod / self._name(container_id, conmon=False)

    def monitor_dir(self, pod: Path, container_id: str) -> Path | None:
        """CRI-O's conmon cgroup for this container, beside it; None for other runtimes
        (containerd's shim and dockerd's stay outside the pod's cgroup)."""
        if self.runtime != "crio":
            return None
        return pod / self._name(container_id, conmon=True)

    def _name(self, container_id: str, *, conmon: bool) -> str:
        if self.driver == "systemd":
            prefix = _SCOPE_PREFIX[self.runtime] + ("-conmon" if conmon else "")
            return f"{prefix}-{container_id}.scope"
        return ("crio-conmon-" if conmon else _CGROUPFS_PREFIX[self.runtime]) + container_id


def create(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        raise SimNodeError(f"cannot create cgroup {path}: {exc}") from exc


def relative(root: Path, path: Path) -> str:
    """The path as ``/proc/<pid>/cgroup`` prints it on the ``0::`` line."""
    return "/" + str(path.relative_to(root))


def procs(path: Path) -> list[int]:
    """Processes in this cgroup and every descendant."""
    found: list[int] = []
    for dirpath, _dirs, _files in os.walk(path):
        try:
            text = (Path(dirpath) / "cgroup.procs").read_text()
        except OSError:
            continue  # removed while walking
        found.extend(int(line) for line in text.split())
    return found


def kill_tree(path: Path) -> None:
    """SIGKILL every process in the subtree (cgroup.kill since Linux 5.14, else one by one)."""
    if not path.is_dir():
        return
    kill_file = path / "cgroup.kill"
    if kill_file.exists():
        try:
            kill_file.write_text("1")
            return
        except OSError:
            pass  # fall back to killing one by one
    for pid in procs(path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_empty(path: Path, timeout_s: float) -> bool:
    """Wait until no process is left in the subtree: killed processes take a moment to exit."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not path.is_dir() or not procs(path):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def remove_tree(path: Path) -> list[str]:
    """rmdir the subtree bottom-up (a cgroup dir goes only once it has no children and no
    processes; its files are virtual, so plain rmdir is right). Returns the errors."""
    errors: list[str] = []
    if not path.is_dir():
        return errors
    for dirpath, _dirs, _files in os.walk(path, topdown=False):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass
        except OSError as exc:
            errors.append(f"rmdir {dirpath}: {exc}")
    return errors
