"""Lease leader election against an in-memory Lease API with resourceVersion conflicts."""

# The kubernetes client types every model field as Optional.
# mypy: disable-error-code="union-attr"

from __future__ import annotations

import copy
import threading
from typing import Any

import pytest
from kubernetes.client import V1Lease
from kubernetes.client.exceptions import ApiException

from enricher.publish.lease import LeaseConfig, LeaseElector


class FakeLeaseApi:
    """read/create/replace of one Lease, with optimistic concurrency like the API server."""

    def __init__(self) -> None:
        self.lease: V1Lease | None = None
        self.rv = 0
        self.fail = False

    def _check(self) -> None:
        if self.fail:
            raise ApiException(status=503, reason="unavailable")

    def read_namespaced_lease(self, name: str, namespace: str) -> V1Lease:
        self._check()
        if self.lease is None:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.lease)

    def create_namespaced_lease(self, namespace: str, body: V1Lease) -> V1Lease:
        self._check()
        if self.lease is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        self.rv += 1
        body.metadata.resource_version = str(self.rv)
        self.lease = copy.deepcopy(body)
        return copy.deepcopy(body)

    def replace_namespaced_lease(self, name: str, namespace: str, body: V1Lease) -> V1Lease:
        self._check()
        assert self.lease is not None
        if body.metadata.resource_version != self.lease.metadata.resource_version:
            raise ApiException(status=409, reason="Conflict")
        self.rv += 1
        body.metadata.resource_version = str(self.rv)
        self.lease = copy.deepcopy(body)
        return copy.deepcopy(body)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _elector(api: Any, who: str, clock: Clock) -> LeaseElector:
    return LeaseElector(api, LeaseConfig("ns", "lock", who, 15, 10, 2), clock=clock)


def test_first_candidate_creates_and_others_wait_for_expiry() -> None:
    api, clock = FakeLeaseApi(), Clock()
    a, b = _elector(api, "a", clock), _elector(api, "b", clock)
    assert a.try_acquire_or_renew()
    assert api.lease is not None and api.lease.spec.holder_identity == "a"
    assert not b.try_acquire_or_renew()  # a holds it and b has just seen it
    clock.t += 10
    assert a.try_acquire_or_renew()  # a renews: b sees a new record
    clock.t += 10
    assert not b.try_acquire_or_renew()  # 10 s after b saw the renewal: still a's
    clock.t += 16  # a silent for longer than the lease duration, since b saw it renew
    assert b.try_acquire_or_renew()
    assert api.lease.spec.holder_identity == "b" and api.lease.spec.lease_transitions == 1
    assert not a.try_acquire_or_renew()  # a comes back: the lease is b's and fresh


def test_concurrent_writers_cannot_both_win() -> None:
    api, clock = FakeLeaseApi(), Clock()
    a, b = _elector(api, "a", clock), _elector(api, "b", clock)
    a.try_acquire_or_renew()
    api.lease.spec.holder_identity = ""  # released
    # b reads, then a writes before b does: b's write carries a stale version.
    stale = api.read_namespaced_lease("lock", "ns")
    assert a.try_acquire_or_renew()
    with pytest.raises(ApiException) as err:
        api.replace_namespaced_lease("lock", "ns", stale)
    assert err.value.status == 409
    assert not b.try_acquire_or_renew() and api.lease.spec.holder_identity == "a"


def test_run_leads_renews_and_stands_down_when_renewal_fails() -> None:
    api = FakeLeaseApi()
    config = LeaseConfig(
        "ns", "lock", "a", lease_duration_s=3, renew_deadline_s=2, retry_period_s=0.05
    )
    elector = LeaseElector(api, config)
    stop = threading.Event()
    led = threading.Event()
    lost_seen = threading.Event()

    def lead(lost: threading.Event) -> None:
        led.set()
        lost.wait(10)
        lost_seen.set()

    runner = threading.Thread(target=elector.run, args=(stop, lead), daemon=True)
    runner.start()
    assert led.wait(5) and elector.is_leader
    # The API server goes away: after the renew deadline the leader stands down.
    api.fail = True
    assert lost_seen.wait(10)
    api.fail = False
    stop.set()
    runner.join(10)
    assert not runner.is_alive()
    assert elector.counters.lost >= 1 and elector.counters.errors >= 1
    # Stopping released the lease for the next candidate.
    assert api.lease is not None and not api.lease.spec.holder_identity


def test_bad_timings_fail_at_start() -> None:
    with pytest.raises(ValueError, match="lease duration > renew deadline > retry period"):
        LeaseConfig("ns", "lock", "a", lease_duration_s=5, renew_deadline_s=10)
