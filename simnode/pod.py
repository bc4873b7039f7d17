"""One simulated pod: its netns, its container cgroup, and the processes started in both."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from simnode import cgroup
from simnode.commands import run
from simnode.errors import SimNodeError
from simnode.network import netns_path
from simnode.spec import PodMeta
from simnode.traffic.summary import ClientSummary, ServerSummary

# The directory holding the simnode package: `python -m simnode.traffic` works from here
# whether or not the project is installed in the interpreter the pod runs.
SOURCE_ROOT = Path(__file__).resolve().parent.parent

# Join the container cgroup first (the shell writes its own pid, and exec keeps the pid), then
# enter the netns. nsenter, unlike `ip netns exec`, leaves /sys alone: `ip netns exec`
# remounts /sys, which would hide the cgroup v2 mount from the process.
_ENTER = 'echo $$ > "$1" && ns="$2" && shift 2 && exec nsenter --net="$ns" -- "$@"'

# A hostNetwork pod: the container cgroup only, the node's own network namespace.
_ENTER_HOST = 'echo $$ > "$1" && shift && exec "$@"'

TCP_LISTEN = "0A"


class Pod:
    def __init__(
        self,
        meta: PodMeta,
        *,
        netns: str | None,
        host_veth: str | None,
        cgroup_root: Path,
        cgroup_dir: Path,
        monitor_cgroup_dir: Path | None = None,
    ) -> None:
        self.meta = meta
        # None for a hostNetwork pod: its processes run in the node's namespace.
        self.netns = netns
        self.host_veth = host_veth
        self.cgroup_dir = cgroup_dir  # the container's; its parent is the pod's
        # CRI-O's conmon cgroup beside the container's (None for other runtimes): part of the
        # pod, not of the container. Empty: no conmon runs in simnode.
        self.monitor_cgroup_dir = monitor_cgroup_dir
        self.cgroup_path = cgroup.relative(cgroup_root, cgroup_dir)  # as /proc/<pid>/cgroup
        self.mac = ""
        self._procs: list[subprocess.Popen[str]] = []

    def __repr__(self) -> str:
        return f"Pod({self.name!r}, ip={self.ip}, node={self.node}, zone={self.zone})"

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def ip(self) -> str:
        return self.meta.ip

    @property
    def ip6(self) -> str | None:
        return self.meta.ip6

    @property
    def uid(self) -> str:
        return self.meta.uid

    @property
    def container_id(self) -> str:
        return self.meta.container_id

    @property
    def node(self) -> str:
        return self.meta.node.name

    @property
    def zone(self) -> str:
        return self.meta.node.zone

    @property
    def processes(self) -> list[subprocess.Popen[str]]:
        return list(self._procs)

    # -- processes ---------------------------------------------------------------------------

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped so that it runs in this pod's container cgroup and netns."""
        if not argv:
            raise SimNodeError("empty command")
        procs_file = str(self.cgroup_dir / "cgroup.procs")
        if self.netns is None:
            return ["sh", "-c", _ENTER_HOST, "sh", procs_file, *argv]
        return ["sh", "-c", _ENTER, "sh", procs_file, netns_path(self.netns), *argv]

    def start(
        self,
        argv: Sequence[str],
        *,
        stdout: int | None = subprocess.PIPE,
        stderr: int | None = subprocess.PIPE,
        stdin: int | None = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[str]:
        """Start ``argv`` in the pod. Text pipes by default: a process that writes a lot must
        be read or given ``stdout=subprocess.DEVNULL``. Killed at teardown."""
        proc = subprocess.Popen(
            self.command(argv),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            text=True,
            cwd=SOURCE_ROOT,
            start_new_session=True,  # its own process group, killed as one at teardown
        )
        self._procs.append(proc)
        return proc

    def run(
        self, argv: Sequence[str], *, timeout_s: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the pod to completion and capture its output."""
        proc = self.start(argv)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            _kill_group(proc)
            proc.communicate()
            raise SimNodeError(f"{argv} in pod {self.name} timed out after {timeout_s}s") from exc
        done = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        if check and done.returncode != 0:
            raise SimNodeError(
                f"{list(argv)} in pod {self.name} exited {done.returncode}: {err.strip()}"
            )
        return done

    @staticmethod
    def python(module: str, *args: str) -> list[str]:
        """``[this interpreter, -m, module, args...]``."""
        return [sys.executable, "-m", module, *args]

    def start_server(
        self,
        port: int,
        reply_bytes: int,
        *,
        request_bytes: int | None = None,
        bind: str = "0.0.0.0",
    ) -> subprocess.Popen[str]:
        """Start ``simnode.traffic server`` here (see ``simnode.traffic``); ``bind`` "::"
        serves both families."""
        args = ["server", "--port", str(port), "--reply-bytes", str(reply_bytes), "--bind", bind]
        if request_bytes is not None:
            args += ["--request-bytes", str(request_bytes)]
        # It prints two lines (listening, and its summary at exit): the pipe cannot fill.
        return self.start(self.python("simnode.traffic", *args))

    def stop_server(self, proc: subprocess.Popen[str], *, timeout_s: float = 10) -> ServerSummary:
        """SIGTERM a ``start_server`` process; return the summary it prints on the way out."""
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            _kill_group(proc)
            proc.communicate()
            raise SimNodeError(f"server in pod {self.name} ignored SIGTERM") from exc
        lines = out.strip().splitlines()
        if not lines or not lines[-1].startswith('{"port"'):
            raise SimNodeError(f"server in pod {self.name} printed no summary: {out!r} {err}")
        return ServerSummary.from_json(lines[-1])

    def run_client(
        self,
        host: str,
        port: int,
        *,
        count: int,
        send_bytes: int,
        expect_reply_bytes: int | None = None,
        interval_ms: int = 0,
        timeout_s: float = 120,
        source: str | None = None,
    ) -> ClientSummary:
        """Run ``simnode.traffic client`` here to completion; return its summary.

        Raises SimNodeError if any connection failed (or got a reply of another size than
        ``expect_reply_bytes``)."""
        args = [
            "client",
            "--host",
            host,
            "--port",
            str(port),
            "--count",
            str(count),
            "--send-bytes",
            str(send_bytes),
            "--interval-ms",
            str(interval_ms),
        ]
        if expect_reply_bytes is not None:
            args += ["--expect-reply-bytes", str(expect_reply_bytes)]
        if source is not None:
            args += ["--source", source]
        done = self.run(self.python("simnode.traffic", *args), timeout_s=timeout_s, check=False)
        lines = done.stdout.strip().splitlines()
        if not lines:
            raise SimNodeError(f"client in pod {self.name} printed nothing: {done.stderr}")
        summary = ClientSummary.from_json(lines[-1])
        if done.returncode != 0:
            raise SimNodeError(
                f"client in pod {self.name} exited {done.returncode}: {summary} {done.stderr}"
            )
        return summary

    # -- readiness ---------------------------------------------------------------------------

    def listening_ports(self) -> set[int]:
        """TCP ports in LISTEN state in this pod's netns.

        Read from /proc/net/tcp{,6} inside the netns rather than by connecting: a probe
        connection would be a real TCP connection that the collector reports.
        """
        enter = [] if self.netns is None else ["nsenter", f"--net={netns_path(self.netns)}", "--"]
        text = run([*enter, "cat", "/proc/net/tcp", "/proc/net/tcp6"])
        return parse_listening(text)

    def wait_listening(
        self, port: int, *, timeout_s: float = 10, proc: subprocess.Popen[str] | None = None
    ) -> None:
        """Wait until something listens on ``port`` here; fail early if ``proc`` died."""
        deadline = time.monotonic() + timeout_s
        while port not in self.listening_ports():
            if proc is not None and proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                raise SimNodeError(
                    f"process in pod {self.name} exited {proc.returncode} before listening "
                    f"on {port}: {err.strip()}"
                )
            if time.monotonic() >= deadline:
                raise SimNodeError(f"nothing listens on {self.ip}:{port} after {timeout_s}s")
            time.sleep(0.05)

    # -- teardown ----------------------------------------------------------------------------

    def kill_all(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                _kill_group(proc)

    def reap(self) -> None:
        """Collect exit statuses and close pipes of killed processes (no zombies, no
        ResourceWarnings)."""
        for proc in self._procs:
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError, OSError):
                proc.communicate(timeout=5)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def parse_listening(proc_net_tcp: str) -> set[int]:
    """Local ports in LISTEN state from the text of /proc/net/tcp and /proc/net/tcp6."""
    ports: set[int] = set()
    for line in proc_net_tcp.splitlines():
        fields = line.split()
        # "sl local_address rem_address st ...": header lines have "local_address" there.
        if len(fields) > 3 and fields[3] == TCP_LISTEN and ":" in fields[1]:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
