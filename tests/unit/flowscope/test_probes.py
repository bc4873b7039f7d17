"""Readiness and liveness: what /readyz and /livez answer, through a real HTTP server."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from flowscope.metrics import MetricsServer, probe
from flowscope.probes import Probe


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ready_needs_the_condition_and_a_turning_loop() -> None:
    clock = Clock()
    p = Probe("join tcp", stale_s=30.0, clock=clock)
    assert p.ready() == "join tcp: starting" and p.live() is None
    p.set_ready()
    assert p.ready() == "join tcp: main loop not running yet"
    p.beat()
    assert p.ready() is None and p.live() is None
    clock.now += 31
    assert p.live() == "join tcp: main loop has not turned for 31s"
    assert p.ready() == p.live()
    p.beat()
    assert p.live() is None
    p.set_not_ready("leading, listing the cluster")
    assert p.ready() == "join tcp: leading, listing the cluster" and p.live() is None


def test_a_loop_at_rest_is_not_watched() -> None:
    clock = Clock()
    p = Probe("publisher", stale_s=5.0, clock=clock)
    p.beat()
    clock.now += 60
    assert p.live() is not None
    p.rest()
    assert p.live() is None


def test_endpoints_answer_for_every_probe() -> None:
    clock = Clock()
    tcp, dns = Probe("join tcp", clock=clock), Probe("join dns", clock=clock)
    server = MetricsServer(CollectorRegistry(), 0, "127.0.0.1", probes=[tcp, dns])
    try:
        assert probe(server.port, "livez") == (200, "ok")
        assert probe(server.port, "readyz") == (503, "join tcp: starting")
        for p in (tcp, dns):
            p.set_ready()
            p.beat()
        assert probe(server.port, "readyz") == (200, "ok")
        clock.now += 45
        tcp.beat()  # the DNS thread is stuck, the TCP one is not
        assert probe(server.port, "livez") == (503, "join dns: main loop has not turned for 45s")
        assert probe(server.port, "readyz")[0] == 503
        assert probe(server.port, "metrics")[0] == 200
        assert probe(server.port, "nothing")[0] == 404
    finally:
        server.close()
