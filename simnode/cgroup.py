"""cgroup v2 directories shaped like the kubelet's (cgroupfs driver).

The kubelet with the cgroupfs driver puts a container at
``kubepods/<qos>/pod<uid>/<container id>`` (``kubepods/pod<uid>/...`` for Guaranteed pods),
and the collector recognises pods by exactly those last components. simnode puts that tree
under one run-specific parent (``<root>/fs-<run id>/kubepods/...``) so that killing and
removing a whole run is one subtree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Literal

from simnode.errors import SimNodeError

DEFAULT_ROOT = Path("/sys/fs/cgroup/unified")
QosClass = Literal["guaranteed", "burstable", "besteffort"]
QOS_CLASSES: tuple[QosClass, ...] = ("guaranteed", "burstable", "besteffort")


def check_root(root: Path) -> None:
    """Fail loudly unless ``root`` is a writable cgroup v2 hierarchy."""
    if not (root / "cgroup.controllers").is_file():
        raise SimNodeError(
            f"{root} is not a cgroup v2 mount (no cgroup.controllers); pass the cgroup v2 root "
            "(e.g. /sys/fs/cgroup on a unified host, /sys/fs/cgroup/unified on a hybrid one)"
        )
    if not os.access(root, os.W_OK):
        raise SimNodeError(f"{root} is not writable: simnode must run as root")


def pod_dir(run_dir: Path, qos: QosClass, pod_uid: str) -> Path:
    base = run_dir / "kubepods"
    # Guaranteed pods sit directly under kubepods: the kubelet has no QoS dir for them.
    return (base if qos == "guaranteed" else base / qos) / f"pod{pod_uid}"


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
