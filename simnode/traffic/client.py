"""The client: N sequential request/reply connections, each completed before the next."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from simnode.traffic.summary import ClientSummary
from simnode.traffic.wire import MAX_ERRORS_KEPT, recv_until, send_exactly


@dataclass(frozen=True)
class ClientSettings:
    host: str
    port: int
    count: int
    send_bytes: int
    expect_reply_bytes: int | None  # None: any reply size counts as complete
    interval_s: float
    timeout_s: float
    # Source address to bind before connecting (a hostNetwork pod uses its node's address).
    source: str | None = None


def run_client(settings: ClientSettings) -> ClientSummary:
    summary = ClientSummary(server=f"{settings.host}:{settings.port}")
    summary.start_time_ns = time.time_ns()
    for i in range(settings.count):
        if i and settings.interval_s > 0:
            time.sleep(settings.interval_s)
        summary.connections += 1
        try:
            _one(settings, summary)
        except (OSError, ValueError) as exc:
            summary.failed += 1
            if len(summary.errors) < MAX_ERRORS_KEPT:
                summary.errors.append(f"connection {i}: {type(exc).__name__}: {exc}")
    summary.end_time_ns = time.time_ns()
    return summary


def _one(settings: ClientSettings, summary: ClientSummary) -> None:
    t0 = time.perf_counter_ns()
    source = (settings.source, 0) if settings.source else None
    with socket.create_connection(
        (settings.host, settings.port), settings.timeout_s, source_address=source
    ) as sock:
        connect_us = (time.perf_counter_ns() - t0) // 1000
        local_addr, local_port = sock.getsockname()[:2]
        send_exactly(sock, settings.send_bytes)
        # Half-close: the server reads to EOF, so it knows the request is complete.
        sock.shutdown(socket.SHUT_WR)
        # Reading to EOF means the server has sent its FIN: the connection is finished on
        # both sides (bar the final ACK) before this returns.
        received = recv_until(sock, None)
    if settings.expect_reply_bytes is not None and received != settings.expect_reply_bytes:
        raise ValueError(f"reply was {received} bytes, expected {settings.expect_reply_bytes}")
    summary.completed += 1
    summary.local_addr = local_addr
    summary.local_ports.append(local_port)
    summary.connect_us.append(connect_us)
    summary.bytes_sent += settings.send_bytes
    summary.bytes_received += received
