"""Running host commands (iproute2, nsenter) with errors that say what failed."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

from simnode.errors import SimNodeError

REQUIRED_TOOLS = {"ip": "iproute2", "nsenter": "util-linux"}


def require_tools() -> None:
    """Fail loudly, naming the Debian package, when a tool simnode shells out to is missing."""
    missing = [
        f"{tool} (apt-get install {pkg})"
        for tool, pkg in REQUIRED_TOOLS.items()
        if shutil.which(tool) is None
    ]
    if missing:
        raise SimNodeError("simnode needs: " + ", ".join(missing))


def run(argv: Sequence[str], *, timeout_s: float = 30.0) -> str:
    """Run a command; return its stdout, or raise SimNodeError with its stderr."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SimNodeError(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise SimNodeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def try_run(argv: Sequence[str]) -> str | None:
    """Run a teardown command; return None on success or the error text (never raises)."""
    try:
        run(argv)
    except SimNodeError as exc:
        return str(exc)
    return None
