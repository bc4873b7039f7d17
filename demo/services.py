"""Start flowscope's services as real processes, wait until they are ready, stop them cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from flowscope.topics import Topics


class ServiceFailed(RuntimeError):
    """A service exited or did not become ready; the message carries its log's tail."""


class ServiceProcess:
    """One service (``python -m <module> ...``) with its output in a log file."""

    def __init__(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], log_dir: Path
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            list(argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout_s: float) -> None:
        """Block until ``pattern`` (a regex) appears in the log; fail loudly on exit/timeout."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if regex.search(self.log_text()):
                return
            if self.proc.poll() is not None:
                raise ServiceFailed(
                    f"{self.name} exited with {self.proc.returncode} before it was ready:\n"
                    f"{self.tail()}"
                )
            time.sleep(0.2)
        raise ServiceFailed(
            f"{self.name} not ready after {timeout_s:.0f}s (waited for /{pattern}/):\n{self.tail()}"
        )

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise ServiceFailed(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, then SIGKILL of the whole process group after ``timeout_s``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


@dataclass(frozen=True)
class PipelineSettings:
    bootstrap: str
    topics: Topics
    node_name: str
    log_dir: Path
    window_s: float = 10.0
    grace_s: float = 5.0
    # How long the processor waits, once traffic stops, before it trusts the wall clock to
    # close the last window (see processors/core/windows.py): short here so results come quickly.
    idle_allowance_s: float = 2.0
    cgroup_root: str | None = None
    # Extra command-line arguments per service, e.g. ("--dns-enabled", "true").
    collector_args: tuple[str, ...] = ()
    # A command the collector runs under, e.g. setpriv with a capability bounding set.
    collector_wrapper: tuple[str, ...] = ()
    processor_args: tuple[str, ...] = ()
    # More environment for every service, e.g. the FLOWSCOPE_KAFKA_* security settings.
    extra_env: Mapping[str, str] = field(default_factory=dict)


def _env(settings: PipelineSettings) -> dict[str, str]:
    env = {
        "FLOWSCOPE_BOOTSTRAP_SERVERS": settings.bootstrap,
        "FLOWSCOPE_TOPIC_PREFIX": settings.topics.prefix,
        "FLOWSCOPE_NODE_NAME": settings.node_name,
    }
    if settings.cgroup_root:
        env["FLOWSCOPE_CGROUP_ROOT"] = settings.cgroup_root
    return {**env, **settings.extra_env}


@contextmanager
def running_pipeline(settings: PipelineSettings) -> Iterator[dict[str, ServiceProcess]]:
    """Collector, enricher (join) and processor, started and ready; all stopped on exit."""
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    env = _env(settings)
    py = sys.executable
    with ExitStack() as stack:
        services: dict[str, ServiceProcess] = {}

        def start(name: str, argv: list[str], ready: str, timeout_s: float) -> None:
            svc = ServiceProcess(name, argv, env, settings.log_dir)
            stack.callback(svc.stop)
            services[name] = svc
            svc.wait_for_log(ready, timeout_s)

        start(
            "collector",
            [*settings.collector_wrapper, py, "-m", "collector", *settings.collector_args],
            r"collector ready",
            60,
        )
        start("enricher", [py, "-m", "enricher", "join"], r"enricher ready", 60)
        start(
            "processor",
            [
                py,
                "-m",
                "processors",
                "worker",
                "--window-seconds",
                str(settings.window_s),
                "--grace-seconds",
                str(settings.grace_s),
                "--idle-allowance-seconds",
                str(settings.idle_allowance_s),
                *settings.processor_args,
            ],
            r"processor ready",
            120,
        )
        yield services


def publish_metadata(
    bootstrap: str, topics: Topics, objects: Path, env: Mapping[str, str] | None = None
) -> str:
    """Publish a file of Kubernetes objects to the metadata topic (``enricher publish``).

    Returns the publisher's report; raises ServiceFailed with its output if it fails."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "enricher",
            "publish",
            "--file",
            str(objects),
            "--bootstrap-servers",
            bootstrap,
            "--topic-prefix",
            topics.prefix,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if done.returncode != 0:
        raise ServiceFailed(
            f"metadata publish failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return done.stdout
