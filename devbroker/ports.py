"""Free loopback ports for brokers that tests and benches start beside the shared one."""

from __future__ import annotations

import random
import socket


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports (a cluster's layout: node i
    takes base + i - 1). Free when asked; a port may still be taken before the broker binds
    it, and the broker then fails to start naming the port."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
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
