"""Which runs are alive: one small file per run, written before any kernel object exists.

``sweep`` must not remove the objects of a run that is still going (several engineers' tests
share this machine), so each run records its owner process (pid plus the process start time,
because pids are reused). A run whose owner is gone is a crashed run and may be swept.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = Path("/run/flowscope-simnode")


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    pid: int
    pid_start: int  # /proc/<pid>/stat field 22, clock ticks since boot
    cgroup_root: str


def process_start(pid: int) -> int | None:
    """The process's start time, or None when no such process exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 overall; fields here start at field 3


class Registry:
    def __init__(self, state_dir: Path = DEFAULT_STATE_DIR) -> None:
        self.state_dir = state_dir

    def _path(self, run_id: str) -> Path:
        return self.state_dir / f"{run_id}.json"

    def register(self, run_id: str, cgroup_root: Path) -> RunRecord:
        pid = os.getpid()
        start = process_start(pid)
        assert start is not None  # our own process
        record = RunRecord(run_id, pid, start, str(cgroup_root))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._path(run_id).write_text(json.dumps(record.__dict__))
        return record

    def get(self, run_id: str) -> RunRecord | None:
        try:
            data = json.loads(self._path(run_id).read_text())
            return RunRecord(
                str(data["run_id"]),
                int(data["pid"]),
                int(data["pid_start"]),
                str(data["cgroup_root"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def run_ids(self) -> list[str]:
        try:
            names = os.listdir(self.state_dir)
        except FileNotFoundError:
            return []
        return sorted(n.removesuffix(".json") for n in names if n.endswith(".json"))

    def alive(self, run_id: str) -> bool:
        record = self.get(run_id)
        return record is not None and process_start(record.pid) == record.pid_start

    def unregister(self, run_id: str) -> None:
        self._path(run_id).unlink(missing_ok=True)
