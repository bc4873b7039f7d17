"""The collector's own health: a Prometheus text endpoint and a periodic record on Kafka.

Both publish the same numbers, :meth:`collector.app.Collector.counters`: every loss the
collector can count (kernel ring buffer, decode errors, Kafka buffer full, delivery
failures) next to its throughput counters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from collector.periodic import Periodic
from flowscope.codec import JsonCodec
from flowscope.records import CollectorHealth

log = logging.getLogger("collector.health")

Counters = Callable[[], dict[str, int]]

# Values that are levels, not running totals (Prometheus gauges, no _total suffix).
GAUGES = frozenset({"in_flight"})


def prometheus_text(counters: dict[str, int], prefix: str = "flowscope_collector") -> str:
    """The Prometheus text exposition format (version 0.0.4) of the counters."""
    lines: list[str] = []
    for name, value in sorted(counters.items()):
        gauge = name in GAUGES
        metric = f"{prefix}_{name}" if gauge else f"{prefix}_{name}_total"
        lines.append(f"# TYPE {metric} {'gauge' if gauge else 'counter'}")
        lines.append(f"{metric} {int(value)}")
    return "\n".join(lines) + "\n"


class MetricsServer:
    """``GET /metrics`` on ``host:port`` from a daemon thread. Port 0 picks a free one."""

    def __init__(self, counters: Counters, port: int, host: str = "0.0.0.0") -> None:
        read = counters

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "try /metrics")
                    return
                body = prometheus_text(read()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics: " + format, *args)

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            from collector.errors import CollectorError

            raise CollectorError(
                f"metrics port {host}:{port}: {exc.strerror}; choose another with "
                "--metrics-port (0 disables the endpoint)"
            ) from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class HealthReporter:
    """Produces a :class:`CollectorHealth` record every ``interval_s`` (called from the loop)."""

    def __init__(
        self,
        counters: Counters,
        produce: Callable[[str, bytes, str], bool],
        topic: str,
        node: str,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._counters = counters
        self._produce = produce
        self._topic = topic
        self._node = node
        self._every = Periodic(interval_s, clock)
        self._codec = JsonCodec(CollectorHealth)
        self.sent = 0

    def tick(self, force: bool = False) -> None:
        if not self._every.due(force):
            return
        record = CollectorHealth(
            node=self._node,
            time_ns=time.time_ns(),
            uptime_s=round(self._every.last_s - self._every.started_s, 3),
            counters=self._counters(),
        )
        if self._produce(self._topic, self._codec.encode(record), self._node):
            self.sent += 1
