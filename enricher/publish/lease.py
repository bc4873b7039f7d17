"""Leader election on a coordination.k8s.io/v1 Lease, so publisher replicas can stand by.

The rules are client-go's: a candidate takes the Lease when it does not exist, or when its
holder has not renewed it for ``lease_duration`` as measured on the candidate's own clock
(from when it last saw the record change, so clocks need not agree); the holder renews every
``retry_period`` and gives up leading if it could not renew for ``renew_deadline``. Every
write carries the resourceVersion it read, so two candidates can never both win a round.

The official client ships a LeaderElection too, but it cannot be stopped, calls sys.exit on
bad settings and writes local times: this is the same protocol, small enough to read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

log = logging.getLogger("enricher.publish.lease")

NOT_FOUND, CONFLICT = 404, 409


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration_s > self.renew_deadline_s > self.retry_period_s > 0:
            raise ValueError(
                "lease timings must satisfy lease duration > renew deadline > retry period > 0, "
                f"got {self.lease_duration_s} > {self.renew_deadline_s} > {self.retry_period_s}"
            )


@dataclass
class LeaseCounters:
    acquired: int = 0
    lost: int = 0
    renewals: int = 0
    conflicts: int = 0  # another candidate wrote first
    errors: int = 0


class LeaseElector:
    def __init__(
        self,
        api: Any,
        config: LeaseConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api  # a kubernetes.client.CoordinationV1Api
        self.config = config
        self._clock = clock
        self._observed: tuple[Any, ...] | None = None  # (holder, renewTime, rv) last seen
        self._observed_at = 0.0
        self.counters = LeaseCounters()
        self.is_leader = False

    def holder(self) -> str | None:
        return self._observed[0] if self._observed else None

    def try_acquire_or_renew(self) -> bool:
        """One round: True if this candidate holds the Lease afterwards."""
        c = self.config
        now_wall = datetime.now(UTC)
        try:
            lease = self._api.read_namespaced_lease(c.name, c.namespace)
        except ApiException as exc:
            if exc.status != NOT_FOUND:
                raise
            return self._create(now_wall)
        spec = lease.spec
        record = (spec.holder_identity, spec.renew_time, lease.metadata.resource_version)
        now = self._clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = spec.lease_duration_seconds or c.lease_duration_s
        held_by_other = spec.holder_identity not in (None, "", c.identity)
        if held_by_other and now < self._observed_at + duration:
            return False
        if spec.holder_identity != c.identity:
            spec.acquire_time = now_wall
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = c.identity
        spec.lease_duration_seconds = int(c.lease_duration_s)
        spec.renew_time = now_wall
        try:
            # replace carries metadata.resourceVersion: a concurrent write makes this a 409.
            updated = self._api.replace_namespaced_lease(c.name, c.namespace, lease)
        except ApiException as exc:
            if exc.status == CONFLICT:
                self.counters.conflicts += 1
                return False
            raise
        self._observe(updated)
        return True

    def _create(self, now_wall: datetime) -> bool:
        from kubernetes.client import V1Lease, V1LeaseSpec, V1ObjectMeta

        c = self.config
        body = V1Lease(
            metadata=V1ObjectMeta(name=c.name, namespace=c.namespace),
            spec=V1LeaseSpec(
                holder_identity=c.identity,
                lease_duration_seconds=int(c.lease_duration_s),
                acquire_time=now_wall,
                renew_time=now_wall,
                lease_transitions=0,
            ),
        )
        try:
            created = self._api.create_namespaced_lease(c.namespace, body)
        except ApiException as exc:
            if exc.status == CONFLICT:  # another candidate created it first
                self.counters.conflicts += 1
                return False
            raise
        self._observe(created)
        return True

    def _observe(self, lease: Any) -> None:
        spec = lease.spec
        self._observed = (spec.holder_identity, spec.renew_time, lease.metadata.resource_version)
        self._observed_at = self._clock()

    def _round(self) -> bool:
        try:
            return self.try_acquire_or_renew()
        except Exception as exc:  # the API server away: this round is lost, not the process
            self.counters.errors += 1
            log.warning("lease %s/%s: %s", self.config.namespace, self.config.name, exc)
            return False

    def run(self, stop: threading.Event, lead: Callable[[threading.Event], None]) -> None:
        """Stand by until the Lease is ours, then call ``lead(lost)`` on another thread and
        renew; ``lost`` is set when renewing failed for the renew deadline (or on ``stop``).
        ``lead`` must return soon after ``lost`` is set. Then stand by again, until ``stop``."""
        c = self.config
        while not stop.is_set():
            if not self._round():
                stop.wait(c.retry_period_s)
                continue
            self.is_leader = True
            self.counters.acquired += 1
            log.info("lease %s/%s acquired by %s", c.namespace, c.name, c.identity)
            lost = threading.Event()
            leader = threading.Thread(target=lead, args=(lost,), name="leader", daemon=True)
            leader.start()
            last_renewed = self._clock()
            while not stop.is_set() and leader.is_alive():
                stop.wait(c.retry_period_s)
                if stop.is_set():
                    break
                if self._round():
                    self.counters.renewals += 1
                    last_renewed = self._clock()
                elif self._clock() - last_renewed >= c.renew_deadline_s:
                    log.warning(
                        "lease %s/%s: not renewed for %.0fs, standing down",
                        c.namespace,
                        c.name,
                        c.renew_deadline_s,
                    )
                    break
            lost.set()
            leader.join()
            self.is_leader = False
            self.counters.lost += 1
        # Also when stopped while standing by after a lost renewal: the Lease may still be ours.
        self.release()

    def release(self) -> None:
        """Hand the Lease over at once (shorter than waiting out its duration): clear the
        holder if it is still us."""
        c = self.config
        try:
            lease = self._api.read_namespaced_lease(c.name, c.namespace)
            if lease.spec.holder_identity != c.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            self._api.replace_namespaced_lease(c.name, c.namespace, lease)
        except Exception as exc:  # best effort: the Lease expires by itself anyway
            log.info("lease %s/%s: release failed: %s", c.namespace, c.name, exc)
