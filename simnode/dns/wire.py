"""Just enough DNS wire format for the simulated node's server and stub client.

Independent of collector/dns/parser.py on purpose: the tests check the collector's parser
against what this side builds, and a shared bug would hide itself.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

RCODES = {"NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5}
TYPES = {"A": 1, "NS": 2, "CNAME": 5, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33}
CLASS_IN = 1


class WireError(ValueError):
    pass


class Query(NamedTuple):
    txid: int
    flags: int
    name: str  # as on the wire (case kept), no trailing dot
    qtype: int
    qclass: int
    question_end: int  # offset after the first question: the response copies data[12:end]


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split(".") if name.strip(".") else []:
        raw = label.encode("ascii")
        if not 0 < len(raw) <= 63:
            raise WireError(f"label {label!r} of {name!r} must be 1-63 bytes")
        out += bytes([len(raw)]) + raw
    out += b"\x00"
    if len(out) > 255:
        raise WireError(f"name {name!r} is longer than 255 bytes on the wire")
    return bytes(out)


def build_query(txid: int, name: str, qtype: int = 1, *, rd: bool = True) -> bytes:
    flags = 0x0100 if rd else 0
    return (
        struct.pack("!HHHHHH", txid, flags, 1, 0, 0, 0)
        + encode_name(name)
        + struct.pack("!HH", qtype, CLASS_IN)
    )


def parse_query(data: bytes) -> Query:
    """The header and first question of a query (no compression: queries carry none)."""
    if len(data) < 12:
        raise WireError("shorter than a header")
    txid, flags, qdcount = struct.unpack_from("!HHH", data, 0)
    if qdcount < 1:
        raise WireError("no question")
    labels: list[str] = []
    pos = 12
    while True:
        if pos >= len(data):
            raise WireError("name runs past the end")
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length > 63 or pos + 1 + length > len(data):
            raise WireError("bad label")
        labels.append(data[pos + 1 : pos + 1 + length].decode("ascii", "replace"))
        pos += 1 + length
    if pos + 4 > len(data):
        raise WireError("question cut short")
    qtype, qclass = struct.unpack_from("!HH", data, pos)
    return Query(txid, flags, ".".join(labels), qtype, qclass, pos + 4)


def build_response(
    query: bytes, parsed: Query, rcode: int, addrs: list[str], *, ttl: int = 30
) -> bytes:
    """A response echoing the question, with A/AAAA answers of the asked type among ``addrs``
    (a pointer to the question's name, offset 12)."""
    answers = bytearray()
    count = 0
    if rcode == 0:
        for text in addrs:
            addr = ipaddress.ip_address(text)
            rtype = 1 if addr.version == 4 else 28
            if rtype != parsed.qtype:
                continue
            answers += struct.pack("!HHHIH", 0xC00C, rtype, CLASS_IN, ttl, len(addr.packed))
            answers += addr.packed
            count += 1
    # QR, copy opcode and RD, set RA.
    flags = 0x8000 | (parsed.flags & 0x7900) | 0x0080 | (rcode & 0xF)
    header = struct.pack("!HHHHHH", parsed.txid, flags, 1, count, 0, 0)
    return header + query[12 : parsed.question_end] + bytes(answers)


class Response(NamedTuple):
    txid: int
    rcode: int
    ancount: int
    truncated: bool


def parse_response_header(data: bytes) -> Response:
    if len(data) < 12:
        raise WireError("shorter than a header")
    txid, flags, _qd, ancount = struct.unpack_from("!HHHH", data, 0)
    if not flags & 0x8000:
        raise WireError("not a response")
    return Response(txid, flags & 0xF, ancount, bool(flags & 0x0200))
