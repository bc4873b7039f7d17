"""Run liveness: a run is alive only while its owner process (pid and start time) runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from simnode.registry import Registry, process_start


def test_registered_run_is_alive_and_unregister_forgets_it(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "state")
    record = reg.register("abc123", Path("/cg"))
    assert record.pid == os.getpid() and record.pid_start == process_start(os.getpid())
    assert reg.run_ids() == ["abc123"] and reg.alive("abc123")
    assert reg.get("abc123") == record
    reg.unregister("abc123")
    assert reg.run_ids() == [] and not reg.alive("abc123") and reg.get("abc123") is None


def test_reused_pid_or_garbage_is_not_alive(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    start = process_start(os.getpid())
    assert start is not None
    # Same pid, other start time: the pid was reused by another process.
    (tmp_path / "aaaaaa.json").write_text(
        json.dumps(
            {"run_id": "aaaaaa", "pid": os.getpid(), "pid_start": start + 1, "cgroup_root": "/"}
        )
    )
    (tmp_path / "bbbbbb.json").write_text("{not json")
    assert not reg.alive("aaaaaa") and not reg.alive("bbbbbb")
    assert reg.get("bbbbbb") is None
    assert not reg.alive("cccccc")  # never registered
