"""Free loopback ports for brokers that tests and benches start beside the shared one."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_low() -> int:
    """The first port the kernel hands out as a client's source port."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports (a cluster's layout: node i
    takes base + i - 1). Free when asked; a port may still be taken before the broker binds
    it, and the broker then fails to start naming the port.

    Below the ephemeral range: measured, a stopped cluster's port was taken by a client's
    own source port while its clients kept reconnecting, and the restart could not bind."""
    low = min(20000, _ephemeral_low() - 1000)
    for _ in range(200):
        base = random.randrange(max(1024, low), _ephemeral_low() - count)
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return base
    raise RuntimeError(f"no {count} consecutive free ports on 127.0.0.1")
