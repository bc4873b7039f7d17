"""A detached JVM tracked by a pid file: spawn, identify, measure, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from devbroker.errors import DevBrokerError

# The shell starts the command in the background and exits at once, so the JVM is re-parented
# to init: it survives the caller and never lingers as the caller's zombie.
_DETACH = '"$@" </dev/null >>"$LOG" 2>&1 & echo $!'


def spawn_detached(cmd: Sequence[str], log: Path, cwd: Path) -> int:
    """Start cmd in its own session with output appended to log; return its pid."""
    result = subprocess.run(
        ["/bin/sh", "-c", _DETACH, "sh", *cmd],
        env={**os.environ, "LOG": str(log)},
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        start_new_session=True,
    )
    try:
        return int(result.stdout.strip())
    except ValueError as exc:
        raise DevBrokerError(f"could not start {cmd[0]}: {result.stderr.strip()}") from exc


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def is_alive(pid: int, marker: str) -> bool:
    """True if pid is a live (not zombie) process whose command line contains marker.

    The marker (our server.properties path) guards against a recycled pid.
    """
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z" and marker in cmdline


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except FileNotFoundError:
        return None
    return None


def terminate(pid: int, marker: str, timeout_s: float) -> bool:
    """SIGTERM, wait up to timeout_s, then SIGKILL. Returns True if the exit was clean."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, marker, timeout_s):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_gone(pid, marker, 10.0):
        raise DevBrokerError(f"process {pid} survived SIGKILL")
    return False


def kill(pid: int, marker: str) -> None:
    """SIGKILL and wait until the process is gone: a crash, as fault tests need one."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not _wait_gone(pid, marker, 10.0):
        raise DevBrokerError(f"process {pid} survived SIGKILL")


def _wait_gone(pid: int, marker: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_alive(pid, marker):
            return True
        time.sleep(0.2)
    return not is_alive(pid, marker)


def _last_bytes(path: Path, size: int) -> str | None:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return None


def tail(path: Path, lines: int) -> str:
    text = _last_bytes(path, 64 * 1024)
    if text is None:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


def error_lines(path: Path, limit: int) -> list[str]:
    """The last ERROR/FATAL log lines, each with the line after it (the exception's message).

    A fatal start-up error is followed by a long stack trace, so a plain tail hides the cause.
    """
    text = _last_bytes(path, 256 * 1024) or ""
    lines = text.splitlines()
    found: list[str] = []
    for i, line in enumerate(lines):
        if " ERROR " in line or " FATAL " in line:
            found.append(line)
            if i + 1 < len(lines) and not lines[i + 1].startswith("["):
                found.append("    " + lines[i + 1])
    return found[-limit:]
