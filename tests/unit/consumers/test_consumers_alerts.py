"""AlertEvents as Alertmanager alerts: labels, times and the still-firing set."""

from __future__ import annotations

import threading
from typing import Any

from consumers.alerts import Alertmanager, BridgeCounters, Firing, labels, to_alertmanager
from flowscope.records import AlertEvent

S = 1_000_000_000
T0 = 1_700_000_000 * S


def event(status: str = "firing", window: int = 2, server: str | None = "shop/db") -> AlertEvent:
    return AlertEvent(
        alert_id=f"connect-failure-rate|shop/web|{server or ''}|{T0}",
        status=status,  # type: ignore[arg-type]
        rule="connect-failure-rate",
        severity="warning",
        metric="tcp.connect_failure_rate",
        group={"client_workload": "shop/web", "server_workload": server, "service": None},
        affected_workloads=["shop/db", "shop/web"],
        threshold=0.05,
        evidence=[{"window_start_ns": T0, "value": 0.5, "connections": 40}],
        window_start_ns=T0 + window * 10 * S,
        window_end_ns=T0 + (window + 1) * 10 * S,
        time_ns=T0 + (window + 1) * 10 * S,
    )


def test_labels_are_the_rule_and_the_group_without_empty_dimensions() -> None:
    assert labels(event()) == {
        "alertname": "connect-failure-rate",
        "severity": "warning",
        "metric": "tcp.connect_failure_rate",
        "client_workload": "shop/web",
        "server_workload": "shop/db",
    }
    assert "server_workload" not in labels(event(server=None))


def test_firing_and_resolved_share_labels_and_starts_at() -> None:
    now = T0 + 100 * S
    firing = to_alertmanager(event("firing", 1), now, 240)
    resolved = to_alertmanager(event("resolved", 4), now, 240)
    assert firing["labels"] == resolved["labels"]
    # The episode's first breaching window, from alert_id, not the event's own window.
    assert firing["startsAt"] == resolved["startsAt"] == "2023-11-14T22:13:20.000+00:00"
    assert firing["endsAt"] == "2023-11-14T22:19:00.000+00:00"  # now (22:15:00) + 240 s
    assert resolved["endsAt"] == "2023-11-14T22:14:00.000+00:00"  # first window not breaching
    assert '"value": 0.5' in firing["annotations"]["evidence"]
    assert firing["annotations"]["alert_id"] == event().alert_id


def test_a_resolved_event_from_the_future_ends_now() -> None:
    now = T0 + 5 * S  # the window that resolved it starts at T0 + 40 s
    assert to_alertmanager(event("resolved", 4), now, 240)["endsAt"].endswith("22:13:25.000+00:00")


def test_the_firing_set_follows_episodes() -> None:
    f = Firing()
    f.apply(event("firing"))
    assert list(f.events) == [event().alert_id]
    f.apply(event("resolved", 4))
    assert f.events == {}


def test_a_refused_batch_is_retried_alert_by_alert_and_counted() -> None:
    import urllib.error
    from email.message import Message
    from io import BytesIO

    counters = BridgeCounters()
    posted: list[int] = []

    class Fake(Alertmanager):
        def _post(self, alerts: Any) -> int:
            posted.append(len(alerts))
            if len(alerts) > 1 or alerts[0]["labels"]["alertname"] == "bad":
                raise urllib.error.HTTPError(
                    self.endpoint, 400, "Bad Request", Message(), BytesIO(b"invalid")
                )
            return 200

    am = Fake("http://127.0.0.1:1", counters, threading.Event())
    good = {"labels": {"alertname": "good"}}
    assert am.send([good, {"labels": {"alertname": "bad"}}, good])
    assert posted == [3, 1, 1, 1]
    assert counters.rejected == 1 and counters.posts == 2
