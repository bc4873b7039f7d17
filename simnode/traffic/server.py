"""The request/reply server: one thread per connection, counters readable at exit."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

from simnode.traffic.summary import ServerSummary
from simnode.traffic.wire import MAX_ERRORS_KEPT, drain, recv_until, send_exactly

CONN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ServerSettings:
    bind: str
    port: int
    reply_bytes: int
    request_bytes: int | None  # None: read until the client half-closes
    max_connections: int | None  # None: serve forever


class Server:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.summary = ServerSummary(port=settings.port)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        family = socket.AF_INET6 if ":" in settings.bind else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((settings.bind, settings.port))
        self.sock.listen(512)

    def serve(self) -> ServerSummary:
        """Accept until ``max_connections`` were accepted (forever if None), then wait for
        the open ones to finish."""
        limit = self.settings.max_connections
        accepted = 0
        try:
            while limit is None or accepted < limit:
                conn, _peer = self.sock.accept()
                accepted += 1
                with self._lock:
                    self.summary.connections += 1
                t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
                t.start()
                self._threads = [x for x in self._threads if x.is_alive()] + [t]
        finally:
            self.sock.close()
            for t in self._threads:
                t.join(CONN_TIMEOUT_S)
        return self.summary

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(CONN_TIMEOUT_S)
        received = sent = 0
        try:
            with conn:
                received = recv_until(conn, self.settings.request_bytes)
                sent = send_exactly(conn, self.settings.reply_bytes)
                conn.shutdown(socket.SHUT_WR)
                received += drain(conn)
        except OSError as exc:
            self._fail(f"{type(exc).__name__}: {exc}", received, sent)
            return
        with self._lock:
            self.summary.completed += 1
            self.summary.bytes_received += received
            self.summary.bytes_sent += sent

    def _fail(self, error: str, received: int, sent: int) -> None:
        with self._lock:
            self.summary.failed += 1
            self.summary.bytes_received += received
            self.summary.bytes_sent += sent
            if len(self.summary.errors) < MAX_ERRORS_KEPT:
                self.summary.errors.append(error)
