"""DNS clients for the simulated node: the system resolver, a raw stub, and a load loop.

* ``resolve``: ``getaddrinfo`` per name (glibc: /etc/resolv.conf, search list, ndots), one
  JSON line with each name's outcome;
* ``query``: one hand-built query per name to a given server over UDP or TCP, no search
  list, one JSON line with txid, rcode and latency per name;
* ``load``: queries from one UDP socket as fast as answers come back (a window of
  outstanding queries), for the bench.
"""

from __future__ import annotations

import json
import random
import select
import socket
import struct
import sys
import time
from typing import Any

from simnode.dns.wire import TYPES, WireError, build_query, parse_response_header

__all__ = ["TYPES", "load", "query", "resolve"]

FAMILIES = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "unspec": socket.AF_UNSPEC}


def resolve(names: list[str], family: str) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for name in names:
        start = time.monotonic()
        try:
            infos = socket.getaddrinfo(name, None, FAMILIES[family], socket.SOCK_DGRAM)
            addrs = sorted({str(info[4][0]) for info in infos})
            results.append(
                {
                    "name": name,
                    "ok": True,
                    "addrs": addrs,
                    "elapsed_ms": (time.monotonic() - start) * 1000,
                }
            )
        except socket.gaierror as exc:
            results.append(
                {
                    "name": name,
                    "ok": False,
                    "error": exc.errno,
                    "elapsed_ms": (time.monotonic() - start) * 1000,
                }
            )
    return results


def _exchange_udp(server: str, payload: bytes, timeout_s: float) -> tuple[bytes | None, int]:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((server, 53))
        sock.send(payload)
        port = sock.getsockname()[1]
        sock.settimeout(timeout_s)
        try:
            return sock.recv(4096), port
        except TimeoutError:
            return None, port


def _exchange_tcp(server: str, payload: bytes, timeout_s: float) -> tuple[bytes | None, int]:
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect((server, 53))
        port = sock.getsockname()[1]
        sock.sendall(struct.pack("!H", len(payload)) + payload)
        try:
            head = _recv_exactly(sock, 2)
            return _recv_exactly(sock, struct.unpack("!H", head)[0]), port
        except (TimeoutError, ConnectionError):
            return None, port


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


def query(
    server: str, names: list[str], qtype: str, tcp: bool, timeout_s: float
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for name in names:
        txid = random.randrange(65536)
        payload = build_query(txid, name, TYPES[qtype])
        start = time.monotonic()
        exchange = _exchange_tcp if tcp else _exchange_udp
        reply, port = exchange(server, payload, timeout_s)
        elapsed = (time.monotonic() - start) * 1000
        entry: dict[str, Any] = {"name": name, "txid": txid, "port": port, "elapsed_ms": elapsed}
        if reply is None:
            entry["timeout"] = True
        else:
            try:
                header = parse_response_header(reply)
                entry.update(rcode=header.rcode, ancount=header.ancount)
            except WireError as exc:
                entry["error"] = str(exc)
        results.append(entry)
    return results


def load(
    server: str, names: list[str], count: int, window: int, timeout_s: float
) -> dict[str, Any]:
    """``count`` A queries cycling through ``names`` from one connected UDP socket, at most
    ``window`` outstanding. A query unanswered after ``timeout_s`` is given up."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((server, 53))
    sock.setblocking(False)
    payloads = [build_query(0, n, 1) for n in names]
    outstanding: dict[int, float] = {}
    sent = answered = lost = 0
    txid = random.randrange(65536)
    start = time.monotonic()
    while answered + lost < count:
        while sent < count and len(outstanding) < window:
            txid = (txid + 1) & 0xFFFF
            if txid in outstanding:
                break
            body = payloads[sent % len(payloads)]
            sock.send(struct.pack("!H", txid) + body[2:])
            outstanding[txid] = time.monotonic()
            sent += 1
        ready, _, _ = select.select([sock], [], [], 0.05)
        if ready:
            while True:
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    break
                if len(data) >= 2 and outstanding.pop(struct.unpack_from("!H", data)[0], -1.0) >= 0:
                    answered += 1
        now = time.monotonic()
        for tid in [t for t, at in outstanding.items() if now - at > timeout_s]:
            del outstanding[tid]
            lost += 1
    elapsed = time.monotonic() - start
    sock.close()
    return {
        "sent": sent,
        "answered": answered,
        "lost": lost,
        "elapsed_s": elapsed,
        "qps": answered / elapsed if elapsed > 0 else 0.0,
    }


def main_resolve(names: list[str], family: str) -> int:
    print(json.dumps(resolve(names, family)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit("run it as: python -m simnode.dns resolve|query|load ...")
