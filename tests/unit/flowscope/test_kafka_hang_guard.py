"""A transactional call that never returns (librdkafka's send_offsets_to_transaction once the
group coordinator went away) ends the process with one line naming the cause."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from flowscope import kafka
from flowscope.resources import SOURCE_ROOT


def test_a_call_that_returns_in_time_leaves_the_process_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka, "HANG_GRACE_S", 0.0)
    with kafka.exit_if_hung("Kafka commit_transaction", 0.05):
        pass
    time.sleep(0.2)  # an uncancelled timer would have ended this process by now
    assert not [t for t in threading.enumerate() if isinstance(t, threading.Timer)]


def test_a_hung_call_exits_with_the_cause() -> None:
    code = (
        "import time; from flowscope import kafka; kafka.HANG_GRACE_S = 0.2\n"
        "with kafka.exit_if_hung('Kafka send_offsets_to_transaction', 0.1):\n"
        "    time.sleep(30)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=SOURCE_ROOT, capture_output=True, text=True, timeout=20
    )
    assert done.returncode == kafka.EXIT_HUNG, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("Kafka send_offsets_to_transaction did not return 0s after")
    assert "a restart resumes from the last commit" in lines[0]
