"""A real Alertmanager process for the tests of ``flowscope alerts``."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A receiver that notifies nobody: the tests read Alertmanager's own API.
AM_CONFIG = """\
route: {receiver: nobody, group_wait: 1s, group_interval: 1s, repeat_interval: 1h}
receivers: [{name: nobody}]
"""


@dataclass
class AlertmanagerProcess:
    binary: Path
    state: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        (self.state / "alertmanager.yml").write_text(AM_CONFIG)
        # Loopback only, no cluster (no gossip port), its data in the test's directory.
        with (self.state / "alertmanager.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.binary),
                    f"--config.file={self.state / 'alertmanager.yml'}",
                    f"--storage.path={self.state / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--cluster.listen-address=",
                ],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.state / "alertmanager.log").read_text()
            try:
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).close()
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)  # it binds within a second or so: polled, not assumed
        raise AssertionError("alertmanager not ready within 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.proc = None

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5) as r:
            return list(json.load(r))

    def received(self) -> dict[str, float]:
        """alertmanager_alerts_received_total by status (firing, resolved)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            text = r.read().decode()
        return {
            s.labels["status"]: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "alertmanager_alerts_received_total"
        }
