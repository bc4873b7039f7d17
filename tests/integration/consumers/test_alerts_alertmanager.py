"""``flowscope alerts`` against a real Alertmanager (built from its official source) and the
real broker: retried while Alertmanager is down, listed while firing, gone once resolved, and
nothing sent twice across restarts (Alertmanager's own received counters say so)."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest
from amhelp_consumers import AlertmanagerProcess

from flowscope.codec import JsonCodec
from flowscope.kafka import RecordProducer, TopicSpec, committed_offsets, ensure_topics
from flowscope.records import AlertEvent
from flowscope.topics import Topics

FLOWSCOPE = Path(sys.executable).parent / "flowscope"
S = 1_000_000_000
T = TypeVar("T")


def _event(status: str, server: str, first_ns: int, window_ns: int) -> AlertEvent:
    return AlertEvent(
        alert_id=f"connect-failure-rate|shop/web|{server}|{first_ns}",
        status=status,  # type: ignore[arg-type]
        rule="connect-failure-rate",
        severity="warning",
        metric="tcp.connect_failure_rate",
        group={"client_workload": "shop/web", "server_workload": server, "service": None},
        affected_workloads=["shop/web", server],
        threshold=0.05,
        evidence=[{"window_start_ns": first_ns, "value": 0.4, "connections": 50}],
        window_start_ns=window_ns,
        window_end_ns=window_ns + 10 * S,
        time_ns=window_ns + 10 * S,
    )


def _await(what: str, probe: Callable[[], T | None], timeout_s: float = 60) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.2)  # polling Alertmanager's API for the condition, not assuming it
    raise AssertionError(f"not within {timeout_s} s: {what}")


class Bridge:
    """``flowscope alerts`` as a process; its stdout and stderr lines read as they come."""

    def __init__(self, bootstrap: str, topics: Topics, url: str, group: str) -> None:
        self.proc = subprocess.Popen(
            [
                str(FLOWSCOPE),
                "alerts",
                "--bootstrap-servers",
                bootstrap,
                "--topic-prefix",
                topics.prefix,
                "--alertmanager-url",
                url,
                "--group",
                group,
                "--resend-interval-seconds",
                "3600",
                "--retry-max-seconds",
                "1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        for stream in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.lines.put(line)

    def expect(self, pattern: str, timeout_s: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(line)
            if m := re.search(pattern, line):
                return m
        raise AssertionError(f"no line matching {pattern!r}; saw {seen}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)


@pytest.fixture
def bridges() -> Iterator[list[Bridge]]:
    started: list[Bridge] = []
    yield started
    for b in started:
        b.stop(signal.SIGKILL)


def _committed(bootstrap: str, group: str, topic: str) -> int:
    return committed_offsets(bootstrap, group, [topic]).get((topic, 0), -1)


def _ours(alerts: list[dict[str, Any]], server: str) -> list[dict[str, Any]]:
    return [a for a in alerts if a["labels"].get("server_workload") == server]


def test_alerts_reach_alertmanager_once_across_restarts(
    kafka_bootstrap: str,
    topics: Topics,
    alertmanager: AlertmanagerProcess,
    bridges: list[Bridge],
) -> None:
    ensure_topics(kafka_bootstrap, [TopicSpec(topics.alerts)])
    producer = RecordProducer(kafka_bootstrap)
    codec = JsonCodec(AlertEvent)

    def publish(event: AlertEvent) -> None:
        producer.produce(topics.alerts, codec.encode(event), key=event.alert_id)
        assert producer.flush(30) == 0

    group = f"{topics.prefix}-alerts"
    first = (time.time_ns() // (10 * S) - 60) * 10 * S  # ten minutes ago, on a window
    publish(_event("firing", "shop/db", first, first + 10 * S))

    # Alertmanager is not up yet: the bridge retries, and commits nothing meanwhile.
    bridges.append(Bridge(kafka_bootstrap, topics, alertmanager.url, group))
    bridges[0].expect(r"alerts bridge ready: .* 0 events replayed, 0 firing")
    bridges[0].expect(r"alertmanager unavailable at")
    assert _committed(kafka_bootstrap, group, topics.alerts) < 0  # no commit at all yet
    alertmanager.start()
    bridges[0].expect(r"alertmanager accepted 1 alerts after \d+ failed tries")

    listed = _await("the firing alert listed", lambda: _ours(alertmanager.alerts(), "shop/db"))
    assert len(listed) == 1
    alert = listed[0]
    assert alert["labels"] == {
        "alertname": "connect-failure-rate",
        "severity": "warning",
        "metric": "tcp.connect_failure_rate",
        "client_workload": "shop/web",
        "server_workload": "shop/db",
    }
    assert alert["status"]["state"] == "active"
    want_start = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(first / S))
    assert alert["startsAt"].startswith(want_start), alert["startsAt"]
    assert '"connections": 50' in alert["annotations"]["evidence"]
    assert alert["annotations"]["affected_workloads"] == "shop/web, shop/db"

    publish(_event("resolved", "shop/db", first, first + 40 * S))
    _await(
        "the resolved alert no longer listed",
        lambda: not _ours(alertmanager.alerts(), "shop/db") or None,
    )
    assert alertmanager.received() == {"firing": 1.0, "resolved": 1.0}
    _await(
        "both events committed",
        lambda: _committed(kafka_bootstrap, group, topics.alerts) == 2 or None,
    )

    # Killed and restarted: the two events are not sent again. The next event proves the
    # new bridge has read past them (one partition, in order) before the counters are read.
    bridges[0].stop(signal.SIGKILL)
    bridges.append(Bridge(kafka_bootstrap, topics, alertmanager.url, group))
    bridges[1].expect(r"alerts bridge ready: .* 2 events replayed, 0 firing")
    second = first + 50 * S
    publish(_event("firing", "shop/cache", second, second + 10 * S))
    _await("the second episode listed", lambda: _ours(alertmanager.alerts(), "shop/cache"))
    assert alertmanager.received() == {"firing": 2.0, "resolved": 1.0}
    _await(
        "the second episode committed",
        lambda: _committed(kafka_bootstrap, group, topics.alerts) == 3 or None,
    )

    # Restarted while an episode fires: it is known as firing (re-sent each interval) but,
    # accepted already, not sent again on start.
    bridges[1].stop(signal.SIGTERM)
    bridges.append(Bridge(kafka_bootstrap, topics, alertmanager.url, group))
    bridges[2].expect(r"alerts bridge ready: .* 3 events replayed, 1 firing")
    publish(_event("resolved", "shop/cache", second, second + 30 * S))
    _await(
        "the second episode resolved",
        lambda: not _ours(alertmanager.alerts(), "shop/cache") or None,
    )
    assert alertmanager.received() == {"firing": 2.0, "resolved": 2.0}
