"""Pseudo file systems the BPF path needs, mounted when they are missing.

libbpf finds a tracepoint's id under tracefs (``/sys/kernel/tracing``, or the debugfs copy at
``/sys/kernel/debug/tracing``); hosts and containers often come without it mounted.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from collector.errors import CollectorError

TRACEFS = Path("/sys/kernel/tracing")
DEBUGFS_TRACING = Path("/sys/kernel/debug/tracing")


def tracefs_mounted(path: Path = TRACEFS) -> bool:
    return (path / "events").is_dir()


def ensure_tracefs(path: Path = TRACEFS) -> bool:
    """Mount tracefs at ``path`` unless a tracefs is already reachable. True if we mounted."""
    if tracefs_mounted(path) or tracefs_mounted(DEBUGFS_TRACING):
        return False
    _mount("tracefs", path, "tracefs")
    return True


BPFFS = Path("/sys/fs/bpf")


def bpffs_mounted(path: Path = BPFFS) -> bool:
    """Whether ``path`` (or the mount it is under) is a bpffs, from /proc/self/mounts."""
    target = path.resolve()
    best: tuple[int, str] = (-1, "")
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if (target == point or point in target.parents) and len(point.parts) > best[0]:
            best = (len(point.parts), fields[2])
    return best[1] == "bpf"


def ensure_bpffs(pin_dir: Path, mount_point: Path = BPFFS) -> bool:
    """Mount bpffs at ``mount_point`` if ``pin_dir`` is under it and no bpffs is there.
    True if we mounted. Pins elsewhere must already be on a bpffs."""
    if bpffs_mounted(pin_dir):
        return False
    if pin_dir.resolve() != mount_point and mount_point not in pin_dir.resolve().parents:
        raise CollectorError(f"pin directory {pin_dir} is not on a bpffs (mount -t bpf bpf DIR)")
    _mount("bpf", mount_point, "bpf")
    return True


def _mount(source: str, target: Path, fstype: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_void_p,
    ]
    libc.mount.restype = ctypes.c_int
    if libc.mount(source.encode(), str(target).encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        raise CollectorError(
            f"{fstype} is not mounted and mounting it at {target} failed: {os.strerror(err)}. "
            f"Mount it before starting (mount -t {fstype} {source} {target}) or run as root "
            "with CAP_SYS_ADMIN."
        )
