"""The metadata index of one enricher process, shared by its joiners.

The TCP joiner and the datagram joiner (DNS and UDP) run in one process, each in its own
thread. They read one follower of the compacted metadata topic into one time-aware index:
the topic is read once at start, each change is applied once, and a refused metadata
record is dead-lettered once. Whichever joiner polls applies what arrived; both read under
``lock``, so neither sees a change half applied.
"""

from __future__ import annotations

import threading

from confluent_kafka import Message

from enricher.join.follower import MetadataFollower, RejectFn
from enricher.join.state import MetadataState
from enricher.settings import Settings


class MetadataView:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.state = MetadataState(deleted_grace_ns=int(settings.deleted_pod_grace_s * 1e9))
        self.state.labels = settings.label_selection
        # Reentrant: a joiner holding it around a batch calls poll() inside.
        self.lock = threading.RLock()
        self._follower: MetadataFollower | None = None
        # Each started joiner's dead-letter callback; the first one still running is used.
        self._rejections: list[RejectFn] = []

    def start(self, on_rejected: RejectFn) -> int:
        """Join the view; the first joiner to start reads the topic to its end. Returns the
        records that call loaded (0 when another joiner had loaded them)."""
        with self.lock:
            self._rejections.append(on_rejected)
            if self._follower is not None:
                return 0
            s = self._settings
            self._follower = MetadataFollower(
                s.bootstrap_servers, s.topics.metadata, on_rejected=self._rejected
            )
            return self._follower.load(self.state.apply, timeout_s=s.metadata_load_timeout_s)

    def poll(self) -> int:
        """Apply what arrived since anyone last polled; returns how many records. The TCP
        joiner learns what changed from the index's tracked changes, whoever polled."""
        with self.lock:
            return 0 if self._follower is None else self._follower.poll(self.state.apply)

    @property
    def read_errors(self) -> int:
        return 0 if self._follower is None else self._follower.read_errors

    def stop(self, on_rejected: RejectFn, timeout_s: float | None = None) -> None:
        """Leave the view; the last joiner to leave closes the follower (within
        ``timeout_s``: see close_within)."""
        with self.lock:
            if on_rejected in self._rejections:
                self._rejections.remove(on_rejected)
            if not self._rejections and self._follower is not None:
                self._follower.close(timeout_s)
                self._follower = None

    def _rejected(self, msg: Message, outcome: str) -> None:
        if self._rejections:
            self._rejections[0](msg, outcome)
