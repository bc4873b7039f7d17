"""``flowscope alerts``: the alerts topic forwarded to Alertmanager (POST /api/v2/alerts).

Each AlertEvent becomes one Alertmanager alert: labels from the rule (``alertname``,
``severity``, ``metric``) and the group it fired for (the workloads, service, zones...), the
evidence, threshold, affected workloads and episode id as annotations. ``startsAt`` is the
start of the episode's first breaching window (the last part of ``alert_id``), the same on the
firing and the resolved event, so both land on one Alertmanager alert.

- Firing: ``endsAt`` = now + 4 x ``--resend-interval-seconds``, and every firing alert is re-sent
  each interval (as Prometheus does): if the bridge stops vouching for it, Alertmanager
  resolves it by itself instead of keeping a stale alert forever.
- Resolved: ``endsAt`` = the start of the first window that did not breach (never later
  than now, or Alertmanager would still count it active).
- Delivery: a batch is POSTed until Alertmanager accepts it (exponential backoff up to
  ``--retry-max-seconds`` while it is down or answers 5xx), and only then are the Kafka offsets
  committed for the durable group ``--group``. A restart resumes after the last accepted
  batch: nothing that was accepted is sent again. Killed between an accepted POST and the
  commit, the bridge sends that batch once more; Alertmanager merges an alert with the same
  labels and ``startsAt`` into the one it holds (same fingerprint, no new notification), so
  that re-send is idempotent.
- On start the topic is read up to the committed offsets (nothing is POSTed then) to learn
  which episodes are still firing, so their re-sends go on after a restart.
- An alert Alertmanager refuses (HTTP 4xx) is not retried: it is counted (``rejected``) and
  logged with Alertmanager's reason; undecodable messages are counted too. The counters are
  printed as a JSON line on stderr every ``--status-interval-seconds`` and at exit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from consumers.catalog import RecordDecoder
from consumers.options import (
    BOOTSTRAP,
    LOG_LEVEL,
    PREFIX,
    Option,
    add_options,
    parse_args,
    positive,
)
from flowscope.codec import DecodeError
from flowscope.kafka import Received, TopicFollower, committed_offsets
from flowscope.records import AlertEvent
from flowscope.topics import Topics

OPTIONS = (
    BOOTSTRAP,
    PREFIX,
    LOG_LEVEL,
    Option(
        "alertmanager_url",
        "FLOWSCOPE_ALERTMANAGER_URL",
        "http://127.0.0.1:9093",
        "Alertmanager base URL; alerts are POSTed to <url>/api/v2/alerts",
    ),
    Option(
        "group",
        "FLOWSCOPE_ALERTS_GROUP",
        "flowscope-alerts",
        "Kafka consumer group whose committed offsets say what Alertmanager has accepted",
    ),
    Option(
        "resend_interval_seconds",
        "FLOWSCOPE_ALERTS_RESEND_INTERVAL_SECONDS",
        "60",
        "seconds between re-sends of a firing alert (sent with endsAt = now + 4x this)",
        positive(float),
    ),
    Option(
        "retry_max_seconds",
        "FLOWSCOPE_ALERTS_RETRY_MAX_SECONDS",
        "30",
        "longest wait between two tries while Alertmanager is down (backoff from 0.5 s)",
        positive(float),
    ),
    Option(
        "timeout_seconds",
        "FLOWSCOPE_ALERTS_TIMEOUT_SECONDS",
        "10",
        "timeout of one POST",
        positive(float),
    ),
    Option(
        "generator_url",
        "FLOWSCOPE_ALERTS_GENERATOR_URL",
        "",
        "generatorURL of every alert (e.g. a dashboard link; empty: none)",
    ),
    Option(
        "status_interval_seconds",
        "FLOWSCOPE_ALERTS_STATUS_INTERVAL_SECONDS",
        "60",
        "seconds between two counter lines on stderr",
        positive(float),
    ),
)

_LABEL_NAME = re.compile(r"[^a-zA-Z0-9_]")


@dataclass
class BridgeCounters:
    events: int = 0  # AlertEvents read from the topic (replayed ones not included)
    sent_firing: int = 0  # alerts accepted by Alertmanager, by status
    sent_resolved: int = 0
    resent: int = 0  # re-sends of firing alerts (included in sent_firing)
    posts: int = 0  # accepted POST requests
    retries: int = 0  # failed tries while Alertmanager was down or answering 5xx
    rejected: int = 0  # alerts refused with 4xx: not retried
    undecodable: int = 0
    replayed: int = 0  # events read on start, up to the committed offsets
    last_error: str | None = None


def _label_name(name: str) -> str:
    cleaned = _LABEL_NAME.sub("_", name)
    return cleaned if cleaned[:1].isalpha() or cleaned[:1] == "_" else "_" + cleaned


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")


def episode_start_ns(event: AlertEvent) -> int:
    """Start of the episode's first breaching window: ``alert_id`` ends with it."""
    tail = event.alert_id.rsplit("|", 1)[-1]
    return int(tail) if tail.isdigit() else event.window_start_ns


def labels(event: AlertEvent) -> dict[str, str]:
    out = {"alertname": event.rule, "severity": event.severity, "metric": event.metric}
    for dim, value in event.group.items():
        if value:  # an empty label is no label in Alertmanager
            out.setdefault(_label_name(dim), value)
    return out


def to_alertmanager(
    event: AlertEvent, now_ns: int, firing_ttl_s: float, generator_url: str = ""
) -> dict[str, Any]:
    """One AlertEvent as Alertmanager's postableAlert."""
    starts = episode_start_ns(event)
    if event.status == "firing":
        ends = now_ns + int(firing_ttl_s * 1e9)
    else:
        ends = max(starts + 1_000_000, min(event.window_start_ns, now_ns))
    workloads = ", ".join(event.affected_workloads) or "-"
    alert: dict[str, Any] = {
        "labels": labels(event),
        "annotations": {
            "summary": f"{event.rule}: {event.metric} above {event.threshold:g} ({workloads})",
            "alert_id": event.alert_id,
            "threshold": f"{event.threshold:g}",
            "affected_workloads": workloads,
            "evidence": json.dumps(event.evidence, sort_keys=True, default=str),
            "window": f"{_rfc3339(event.window_start_ns)} .. {_rfc3339(event.window_end_ns)}",
        },
        "startsAt": _rfc3339(starts),
        "endsAt": _rfc3339(ends),
    }
    if generator_url:
        alert["generatorURL"] = generator_url
    return alert


class Firing:
    """Episodes that fired and have not resolved yet, by alert_id (for re-sends)."""

    def __init__(self) -> None:
        self.events: dict[str, AlertEvent] = {}

    def apply(self, event: AlertEvent) -> None:
        if event.status == "firing":
            self.events[event.alert_id] = event
        else:
            self.events.pop(event.alert_id, None)


class Alertmanager:
    """POSTs alerts until accepted; 4xx is final (counted), anything else is retried."""

    def __init__(
        self,
        url: str,
        counters: BridgeCounters,
        stop: threading.Event,
        timeout_s: float = 10.0,
        retry_max_s: float = 30.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.endpoint = url.rstrip("/") + "/api/v2/alerts"
        self.counters = counters
        self.stop = stop
        self.timeout_s = timeout_s
        self.retry_max_s = retry_max_s
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))

    def _post(self, alerts: Sequence[Mapping[str, Any]]) -> int:
        request = urllib.request.Request(
            self.endpoint,
            data=json.dumps(list(alerts)).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            return int(response.status)

    def send(self, alerts: Sequence[Mapping[str, Any]]) -> bool:
        """True once Alertmanager has answered (accepted, or refused as invalid); False only
        when asked to stop first (the caller then commits nothing)."""
        delay, failed = 0.5, 0
        while True:
            try:
                self._post(alerts)
                self.counters.posts += 1
                if failed:
                    self.log(
                        f"alertmanager accepted {len(alerts)} alerts after {failed} failed tries"
                    )
                return True
            except urllib.error.HTTPError as exc:
                if 400 <= exc.code < 500:
                    return self._refused(alerts, exc)
                self.counters.last_error = f"HTTP {exc.code}: {exc.reason}"
            except (urllib.error.URLError, OSError) as exc:
                self.counters.last_error = str(exc)
            if not failed:
                self.log(
                    f"alertmanager unavailable at {self.endpoint}, retrying (backoff up "
                    f"to {self.retry_max_s:g} s): {self.counters.last_error}"
                )
            failed += 1
            self.counters.retries += 1
            if self.stop.wait(delay):
                return False
            delay = min(delay * 2, self.retry_max_s)

    def _refused(self, alerts: Sequence[Mapping[str, Any]], exc: urllib.error.HTTPError) -> bool:
        # Alertmanager stores the valid alerts of a batch and refuses the rest with one 400:
        # send one by one to know which were refused (the valid ones are merged again).
        reason = exc.read().decode(errors="replace")[:500]
        if len(alerts) == 1:
            self.counters.rejected += 1
            self.counters.last_error = f"HTTP {exc.code}: {reason}"
            self.log(f"alertmanager refused {alerts[0].get('labels')}: {reason}")
            return True
        return all(self.send([a]) for a in alerts)


class Bridge:
    def __init__(
        self,
        follower: TopicFollower,
        decoder: RecordDecoder,
        alertmanager: Alertmanager,
        resend_interval_s: float,
        generator_url: str = "",
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.follower = follower
        self.decoder = decoder
        self.am = alertmanager
        self.counters = alertmanager.counters
        self.resend_interval_s = resend_interval_s
        self.generator_url = generator_url
        self.clock = clock
        self.firing = Firing()
        self._last_resend = time.monotonic()

    def _decode(self, messages: Sequence[Received]) -> list[AlertEvent]:
        events: list[AlertEvent] = []
        for msg in messages:
            try:
                events.extend(self.decoder.decode(msg.value))
            except DecodeError as exc:
                self.counters.undecodable += 1
                self.counters.last_error = str(exc)
        return events

    def recover(self, replay: TopicFollower, until: Mapping[tuple[str, int], int]) -> None:
        """Learn the episodes still firing from what was accepted before (up to ``until``,
        the committed offsets), without sending anything."""
        left = {tp: o for tp, o in until.items() if o > 0}
        while left and not self.am.stop.is_set():
            for msg in replay.poll(0.5):
                end = left.get((msg.topic, msg.partition))
                if end is None or msg.offset >= end:
                    continue
                for event in self._decode([msg]):
                    self.firing.apply(event)
                    self.counters.replayed += 1
            # Positions, not offsets of records, say when the end is reached: the last
            # offsets before a commit can be transaction markers that no poll returns.
            at = replay.positions()
            left = {tp: o for tp, o in left.items() if at.get(tp, -1) < o}

    def step(self, timeout_s: float = 0.5) -> bool:
        """One poll: send what arrived, then commit it. False when stopped mid-send."""
        messages = self.follower.poll(timeout_s, max_messages=500)
        events = self._decode(messages)
        self.counters.events += len(events)
        if events:
            now = self.clock()
            ttl = 4 * self.resend_interval_s
            batch = [to_alertmanager(e, now, ttl, self.generator_url) for e in events]
            if not self.am.send(batch):
                return False
            for e in events:
                if e.status == "firing":
                    self.counters.sent_firing += 1
                else:
                    self.counters.sent_resolved += 1
                self.firing.apply(e)
        if messages:
            self.follower.commit(messages)
        if time.monotonic() - self._last_resend >= self.resend_interval_s:
            return self.resend()
        return True

    def resend(self) -> bool:
        self._last_resend = time.monotonic()
        active = list(self.firing.events.values())
        if not active:
            return True
        now = self.clock()
        ttl = 4 * self.resend_interval_s
        if not self.am.send([to_alertmanager(e, now, ttl, self.generator_url) for e in active]):
            return False
        self.counters.sent_firing += len(active)
        self.counters.resent += len(active)
        return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flowscope alerts",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, OPTIONS, dict(os.environ))
    args = parse_args(parser, argv)
    topic = Topics(args.topic_prefix).alerts
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    counters = BridgeCounters()
    am = Alertmanager(
        args.alertmanager_url, counters, stop, args.timeout_seconds, args.retry_max_seconds
    )
    done = committed_offsets(args.bootstrap_servers, args.group, [topic])
    follower = TopicFollower(args.bootstrap_servers, [topic], "earliest", group_id=args.group)
    bridge = Bridge(
        follower, RecordDecoder(AlertEvent), am, args.resend_interval_seconds, args.generator_url
    )
    replay = TopicFollower(args.bootstrap_servers, [topic], "earliest")
    try:
        bridge.recover(replay, done)
    finally:
        replay.close()
    print(
        f"alerts bridge ready: {topic} -> {am.endpoint} (group {args.group}, "
        f"{counters.replayed} events replayed, {len(bridge.firing.events)} firing)",
        flush=True,
    )
    last_status = time.monotonic()
    try:
        while not stop.is_set() and bridge.step():
            if time.monotonic() - last_status >= args.status_interval_seconds:
                last_status = time.monotonic()
                print(json.dumps(asdict(counters)), file=sys.stderr, flush=True)
    finally:
        follower.close()
        print(json.dumps(asdict(counters)), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
