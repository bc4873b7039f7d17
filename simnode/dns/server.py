"""A DNS server for the simulated node, answering per name as its rules say.

Rules (JSON)::

    {"default": {"rcode": "NXDOMAIN"},
     "names": {"web.default.svc.cluster.local": {"addrs": ["10.96.0.20"]},
               "slow.test": {"addrs": ["10.1.0.1"], "delay_ms": 300},
               "short.test": {"addrs": ["192.88.99.1"], "ttl_s": 2},
               "broken.test": {"rcode": "SERVFAIL"},
               "silent.test": {"drop": true},
               "garbage.test": {"malformed": true}}}

A name matches case-insensitively, without the trailing dot; ``*.suffix`` matches below it.
``rcode`` defaults to NOERROR; ``malformed`` answers with a compression-pointer loop (for
the collector's malformed-response path); ``ttl_s`` is the answers' TTL (30 by default).
UDP and TCP on the same port. It prints one JSON
line when it listens, and on SIGTERM/SIGINT one with what it received per name and type.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import struct
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

from simnode.dns.wire import RCODES, WireError, build_response, parse_query


@dataclass(frozen=True)
class Action:
    rcode: int = 0
    addrs: tuple[str, ...] = ()
    delay_s: float = 0.0
    drop: bool = False
    malformed: bool = False
    ttl_s: int = 30

    @staticmethod
    def from_json(spec: dict[str, Any]) -> Action:
        rcode = spec.get("rcode", "NOERROR")
        if rcode not in RCODES:
            raise ValueError(f"rcode {rcode!r}; valid: {', '.join(RCODES)}")
        return Action(
            rcode=RCODES[rcode],
            addrs=tuple(spec.get("addrs", ())),
            delay_s=float(spec.get("delay_ms", 0)) / 1000,
            drop=bool(spec.get("drop", False)),
            malformed=bool(spec.get("malformed", False)),
            ttl_s=int(spec.get("ttl_s", 30)),
        )


class Rules:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.default = Action.from_json(spec.get("default", {"rcode": "NXDOMAIN"}))
        self.exact: dict[str, Action] = {}
        self.suffixes: list[tuple[str, Action]] = []
        for name, action in spec.get("names", {}).items():
            key = name.lower().rstrip(".")
            if key.startswith("*."):
                self.suffixes.append((key[1:], Action.from_json(action)))
            else:
                self.exact[key] = Action.from_json(action)

    def lookup(self, name: str) -> Action:
        key = name.lower().rstrip(".")
        found = self.exact.get(key)
        if found is not None:
            return found
        for suffix, action in self.suffixes:
            if key.endswith(suffix):
                return action
        return self.default


def malformed_response(query: bytes) -> bytes:
    """A response with a valid header whose question name is a pointer to itself."""
    txid = struct.unpack_from("!H", query, 0)[0] if len(query) >= 2 else 0
    return struct.pack("!HHHHHH", txid, 0x8180, 1, 0, 0, 0) + b"\xc0\x0c" + b"\x00\x01\x00\x01"


class Server:
    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.received: Counter[str] = Counter()  # "name TYPE" -> queries received
        self.unparsable = 0

    def answer(self, data: bytes) -> tuple[bytes | None, float]:
        """The response to send (None: say nothing) and after how long."""
        try:
            query = parse_query(data)
        except WireError:
            self.unparsable += 1
            return None, 0.0
        self.received[f"{query.name.lower()} {query.qtype}"] += 1
        action = self.rules.lookup(query.name)
        if action.drop:
            return None, 0.0
        if action.malformed:
            return malformed_response(data), action.delay_s
        return (
            build_response(data, query, action.rcode, list(action.addrs), ttl=action.ttl_s),
            action.delay_s,
        )


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not derive from DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply, delay = self.server.answer(data)
        if reply is None or self.transport is None:
            return
        loop = asyncio.get_running_loop()
        if delay > 0:
            loop.call_later(delay, self.transport.sendto, reply, addr)
        else:
            self.transport.sendto(reply, addr)


async def _tcp_client(
    server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            length = struct.unpack("!H", await reader.readexactly(2))[0]
            data = await reader.readexactly(length)
            reply, delay = server.answer(data)
            if reply is None:
                continue
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    writer.close()


async def serve(rules: Rules, host: str, port: int) -> Server:
    server = Server(rules)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(server), local_addr=(host, port))
    tcp = await asyncio.start_server(
        lambda r, w: _tcp_client(server, r, w), host=host, port=port, reuse_address=True
    )
    print(json.dumps({"listening": port, "host": host}), flush=True)
    await stop.wait()
    udp.close()
    tcp.close()
    return server


def main(rules_json: str, host: str, port: int) -> int:
    rules = Rules(json.loads(rules_json))
    server = asyncio.run(serve(rules, host, port))
    print(
        json.dumps({"received": dict(server.received), "unparsable": server.unparsable}), flush=True
    )
    return 0


if __name__ == "__main__":
    sys.exit("run it as: python -m simnode.dns server --rules JSON")
