"""Exact-size socket transfers shared by the server and the client."""

from __future__ import annotations

import socket

CHUNK = 64 * 1024
_PAYLOAD = memoryview(b"x" * CHUNK)
MAX_ERRORS_KEPT = 10


def send_exactly(sock: socket.socket, size: int) -> int:
    """Send ``size`` payload bytes (sendall raises rather than sending fewer)."""
    left = size
    while left > 0:
        n = min(left, CHUNK)
        sock.sendall(_PAYLOAD[:n])
        left -= n
    return size


def recv_until(sock: socket.socket, limit: int | None) -> int:
    """Read until EOF, or until ``limit`` bytes arrived; return the byte count."""
    got = 0
    while limit is None or got < limit:
        want = CHUNK if limit is None else min(CHUNK, limit - got)
        data = sock.recv(want)
        if not data:
            break
        got += len(data)
    return got


def drain(sock: socket.socket) -> int:
    """Read and discard until EOF: closing with unread data would send RST, not FIN."""
    return recv_until(sock, None)
