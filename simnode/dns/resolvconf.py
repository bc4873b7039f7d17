"""Give a simulated pod its own /etc/resolv.conf, as the kubelet does for a real one.

The kubelet bind-mounts a generated resolv.conf (``nameserver <cluster DNS>``, ``search
<ns>.svc.cluster.local svc.cluster.local cluster.local``, ``options ndots:5``) into each
container's mount namespace. Here: a holder process (the pod's "pause") runs in the pod's
cgroup and netns, in a private mount namespace where the file is bind-mounted over
/etc/resolv.conf; commands started through :meth:`PodResolvConf.command` join that mount
namespace with nsenter. The holder keeps the namespace (and a process whose
``/proc/<pid>/root/etc/resolv.conf`` the collector can read) alive for the pod's lifetime;
pod teardown kills it and the mount goes with the namespace. The host's file is untouched.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from simnode.errors import SimNodeError
from simnode.pod import Pod

# unshare without --fork execs in the new mount namespace, so the holder's pid is the one
# Popen knows. Propagation private: the bind mount never leaks to the host.
_HOLD = 'mount --bind "$1" /etc/resolv.conf && echo ready && exec sleep infinity'


def kubernetes_search(namespace: str, cluster_domain: str = "cluster.local") -> list[str]:
    """The search list the kubelet writes for a pod in ``namespace`` (ClusterFirst policy)."""
    return [f"{namespace}.svc.{cluster_domain}", f"svc.{cluster_domain}", cluster_domain]


def render(
    nameservers: Sequence[str],
    search: Sequence[str],
    ndots: int = 5,
    options: Sequence[str] = (),
) -> str:
    lines = [f"nameserver {ns}" for ns in nameservers]
    if search:
        lines.append("search " + " ".join(search))
    lines.append("options " + " ".join([f"ndots:{ndots}", *options]))
    return "\n".join(lines) + "\n"


class PodResolvConf:
    """A pod's private resolv.conf; use :meth:`command` to run programs that see it."""

    def __init__(self, pod: Pod, text: str, *, timeout_s: float = 10.0) -> None:
        if shutil.which("unshare") is None:
            raise SimNodeError("simnode.dns needs unshare (apt-get install util-linux)")
        self.pod = pod
        self.text = text
        self._dir = Path(tempfile.mkdtemp(prefix="simnode-resolv-"))
        self.path = self._dir / "resolv.conf"
        self.path.write_text(text)
        self.holder = pod.start(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                _HOLD,
                "sh",
                str(self.path),
            ],
        )
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()
        if line.strip() != "ready":
            err = self.holder.stderr.read() if self.holder.stderr else ""
            raise SimNodeError(f"resolv.conf holder in pod {self.pod.name} failed: {err}")
        mounted = Path(f"/proc/{self.holder.pid}/root/etc/resolv.conf")
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if mounted.read_text() == self.text:
                    return
            time.sleep(0.02)
        raise SimNodeError(f"pod {self.pod.name}: {mounted} does not show the pod's resolv.conf")

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run in the holder's mount namespace (pass it to pod.start/run)."""
        return ["nsenter", f"--target={self.holder.pid}", "--mount", "--", *argv]

    def close(self) -> None:
        if self.holder.poll() is None:
            self.holder.kill()
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError, OSError):
            self.holder.communicate(timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> PodResolvConf:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
