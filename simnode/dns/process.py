"""The DNS server running in a pod, started and stopped from the test's side."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from simnode.errors import SimNodeError
from simnode.pod import Pod


class DnsServerProcess:
    """``python -m simnode.dns server`` in ``pod`` on port 53 (UDP and TCP)."""

    def __init__(
        self, pod: Pod, rules: dict[str, Any], port: int = 53, host: str = "0.0.0.0"
    ) -> None:
        """``host`` "::" serves IPv6 and IPv4 alike (a dual-stack pod's DNS)."""
        self.pod = pod
        self.port = port
        self.proc = pod.start(
            Pod.python(
                "simnode.dns",
                "server",
                "--rules",
                json.dumps(rules),
                "--port",
                str(port),
                "--host",
                host,
            )
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # printed once both sockets are bound
        if not line.startswith('{"listening"'):
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise SimNodeError(f"DNS server in pod {pod.name} did not start: {line!r} {err}")

    @property
    def address(self) -> str:
        return self.pod.ip

    def stop(self, timeout_s: float = 10) -> dict[str, int]:
        """SIGTERM it; return what it received: ``{"<name lower> <qtype>": count}``."""
        self.proc.terminate()
        try:
            out, err = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            self.proc.communicate()
            raise SimNodeError(f"DNS server in pod {self.pod.name} ignored SIGTERM") from exc
        lines = out.strip().splitlines()
        if not lines or '"received"' not in lines[-1]:
            raise SimNodeError(f"DNS server printed no summary: {out!r} {err}")
        received: dict[str, int] = json.loads(lines[-1])["received"]
        return received
