"""A strict DNS message parser (RFC 1035 wire format, plus EDNS extended rcodes). Pure.

Strict means every length is checked against the buffer, labels are 63 bytes at most,
names 255, compression pointers must point strictly backwards (which also makes a loop
impossible), reserved label types and bytes after the last section are errors. Any failure
is a :class:`DnsParseError` with a short ``reason`` usable as a counter name; no other
exception escapes (tests/unit/collector/test_dns_parser.py fuzzes this with hypothesis).

A message whose capture was clipped (the kernel copies the first 512 bytes) may end in the
middle of a section: ``parse(..., clipped=True)`` then returns what was complete, with
``complete=False``, instead of failing.

Why our own and not dnspython: we need only the header, the question and the addresses of
the answers, at tens of thousands of packets per second; a full object model per message
costs several times more, and a small parser is easy to fuzz completely.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import Final, NamedTuple

HEADER = struct.Struct("!HHHHHH")
HEADER_SIZE: Final = 12
_U16X2 = struct.Struct("!HH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength

MAX_NAME_WIRE: Final = 255  # RFC 1035 2.3.4, including the length octets and the root
MAX_LABEL: Final = 63
# More than 127 pointers cannot be followed in a 255-byte name; the backwards rule already
# bounds the walk, this bounds the work on a hostile 64 KiB TCP message too.
MAX_POINTERS: Final = 127

TYPE_A: Final = 1
TYPE_CNAME: Final = 5
TYPE_AAAA: Final = 28
TYPE_OPT: Final = 41
# Answer records whose TTL bounds how long the answer's addresses may be used.
_TTL_TYPES: Final = frozenset((TYPE_A, TYPE_AAAA, TYPE_CNAME))

TYPE_NAMES: Final = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    13: "HINFO",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    35: "NAPTR",
    41: "OPT",
    43: "DS",
    46: "RRSIG",
    47: "NSEC",
    48: "DNSKEY",
    64: "SVCB",
    65: "HTTPS",
    252: "AXFR",
    255: "ANY",
    257: "CAA",
}
RCODE_NAMES: Final = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    6: "YXDOMAIN",
    7: "YXRRSET",
    8: "NXRRSET",
    9: "NOTAUTH",
    10: "NOTZONE",
    16: "BADVERS",
}

# Label bytes that print as themselves; anything else is escaped as \DDD (RFC 4343).
_PLAIN_LABEL = re.compile(rb"[A-Za-z0-9_-]+")
_PLAIN_NAME = re.compile(rb"[A-Za-z0-9_.-]*")
_PRINTABLE = frozenset(range(0x21, 0x7F)) - {ord("."), ord("\\")}


def type_name(qtype: int) -> str:
    return TYPE_NAMES.get(qtype) or f"TYPE{qtype}"


def rcode_name(rcode: int) -> str:
    return RCODE_NAMES.get(rcode) or f"RCODE{rcode}"


class DnsParseError(ValueError):
    """The bytes are not a valid DNS message. ``header`` is set when the first 12 bytes
    were readable, so a malformed response can still be matched by its id."""

    def __init__(self, reason: str, detail: str, header: Header | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.header = header


class Header(NamedTuple):
    txid: int
    flags: int
    qdcount: int
    ancount: int
    nscount: int
    arcount: int

    @property
    def is_response(self) -> bool:
        return bool(self.flags & 0x8000)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def truncated(self) -> bool:
        """TC: the answer did not fit (the client should retry over TCP)."""
        return bool(self.flags & 0x0200)

    @property
    def rcode(self) -> int:
        return self.flags & 0xF


class Question(NamedTuple):
    name: str  # presentation form without the trailing dot ("" is the root), case kept
    qtype: int
    qclass: int


class Message(NamedTuple):
    header: Header
    questions: tuple[Question, ...]
    rcode: int  # with the EDNS extended bits when an OPT record carries them
    answer_addrs: tuple[str, ...]  # A and AAAA rdata of the answer section, in order
    cnames: tuple[str, ...]  # CNAME targets in the answer section
    complete: bool  # False: the capture was clipped before the end of the message
    # The smallest TTL of the answer section's A, AAAA and CNAME records; None if none.
    min_ttl: int | None = None

    @property
    def question(self) -> Question | None:
        return self.questions[0] if self.questions else None


def parse_header(data: bytes) -> Header:
    if len(data) < HEADER_SIZE:
        raise DnsParseError("short_header", f"{len(data)} bytes, a header is 12")
    return Header(*HEADER.unpack_from(data, 0))


class _Clipped(Exception):
    """Ran off the end of a clipped capture (not an error of the message)."""


def _label_text(label: bytes) -> str:
    if _PLAIN_LABEL.fullmatch(label):
        return label.decode("ascii")
    return "".join(chr(b) if b in _PRINTABLE else f"\\{b:03d}" for b in label)


def read_name(data: bytes, offset: int, clipped: bool = False) -> tuple[str, int]:
    """The name at ``offset``: (text, offset after it in the original position)."""
    labels, after = _walk_name(data, offset, clipped)
    joined = b".".join(labels)
    # Fast path: ordinary host names are plain ASCII and need no escaping; a dot inside a
    # label would make the join ambiguous, so that case is escaped label by label.
    if _PLAIN_NAME.fullmatch(joined) and joined.count(b".") == len(labels) - 1:
        return joined.decode("ascii"), after
    return ".".join(_label_text(label) for label in labels), after


def skip_name(data: bytes, offset: int, clipped: bool = False) -> int:
    """Validate the name at ``offset`` like :func:`read_name`, without building its text."""
    return _walk_name(data, offset, clipped, keep=False)[1]


def _walk_name(
    data: bytes, offset: int, clipped: bool, keep: bool = True
) -> tuple[list[bytes], int]:
    labels: list[bytes] = []
    end = len(data)
    pos = offset
    after = -1  # where parsing resumes: after the first pointer, or after the root label
    wire_len = 0
    pointers = 0
    lowest = offset  # a pointer must go below every position already read
    while True:
        if pos >= end:
            if clipped:
                raise _Clipped
            raise DnsParseError("truncated", f"name at {offset} runs past the end ({end})")
        length = data[pos]
        if length >= 0xC0:
            if pos + 1 >= end:
                if clipped:
                    raise _Clipped
                raise DnsParseError("truncated", f"pointer at {pos} cut short")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if target >= lowest:
                raise DnsParseError("bad_pointer", f"pointer at {pos} to {target} is not backwards")
            pointers += 1
            if pointers > MAX_POINTERS:
                raise DnsParseError("bad_pointer", f"more than {MAX_POINTERS} pointers")
            if after < 0:
                after = pos + 2
            pos = lowest = target
            continue
        if length > MAX_LABEL:
            raise DnsParseError("bad_label", f"reserved label type {length:#04x} at {pos}")
        wire_len += length + 1
        if wire_len > MAX_NAME_WIRE:
            raise DnsParseError("name_too_long", f"name at {offset} longer than 255 bytes")
        if length == 0:
            return labels, (after if after >= 0 else pos + 1)
        if pos + 1 + length > end:
            if clipped:
                raise _Clipped
            raise DnsParseError("truncated", f"label at {pos} runs past the end")
        if keep:
            labels.append(data[pos + 1 : pos + 1 + length])
        pos += 1 + length


def _need(data: bytes, offset: int, size: int, clipped: bool, what: str) -> None:
    if offset + size > len(data):
        if clipped:
            raise _Clipped
        raise DnsParseError("truncated", f"{what} at {offset} runs past the end ({len(data)})")


def parse(data: bytes, clipped: bool = False) -> Message:
    """Parse one message. ``clipped``: ``data`` is the start of a longer message."""
    header = parse_header(data)
    try:
        return _parse_body(data, header, clipped)
    except DnsParseError as exc:
        exc.header = header
        raise


def _parse_body(data: bytes, header: Header, clipped: bool) -> Message:
    questions: list[Question] = []
    addrs: list[str] = []
    cnames: list[str] = []
    ttls: list[int] = []
    rcode = header.rcode
    pos = HEADER_SIZE
    section_counts = (header.ancount, header.nscount, header.arcount)
    try:
        for _ in range(header.qdcount):
            name, pos = read_name(data, pos, clipped)
            _need(data, pos, 4, clipped, "question type/class")
            qtype, qclass = _U16X2.unpack_from(data, pos)
            pos += 4
            questions.append(Question(name, qtype, qclass))
        for section, count in enumerate(section_counts):
            for _ in range(count):
                pos = skip_name(data, pos, clipped)
                _need(data, pos, _RR_FIXED.size, clipped, "record header")
                rtype, _rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, pos)
                pos += _RR_FIXED.size
                _need(data, pos, rdlength, clipped, "rdata")
                rdata_end = pos + rdlength
                if section == 0:
                    _answer(data, pos, rtype, rdlength, addrs, cnames)
                    if rtype in _TTL_TYPES:
                        ttls.append(ttl if ttl < 2**31 else 0)  # RFC 2181 8: top bit set = 0
                elif section == 2 and rtype == TYPE_OPT:
                    # EDNS: the TTL's top byte holds the upper 8 bits of a 12-bit rcode.
                    rcode |= (ttl >> 24) << 4
                pos = rdata_end
    except _Clipped:
        if not questions and header.qdcount:
            raise DnsParseError(
                "clipped_question", "the capture ends inside the question"
            ) from None
        return Message(
            header,
            tuple(questions),
            rcode,
            tuple(addrs),
            tuple(cnames),
            False,
            min(ttls, default=None),
        )
    if pos != len(data) and not clipped:
        raise DnsParseError("trailing_bytes", f"{len(data) - pos} bytes after the last record")
    return Message(
        header, tuple(questions), rcode, tuple(addrs), tuple(cnames), True, min(ttls, default=None)
    )


def _answer(
    data: bytes, pos: int, rtype: int, rdlength: int, addrs: list[str], cnames: list[str]
) -> None:
    if rtype == TYPE_A:
        if rdlength != 4:
            raise DnsParseError("bad_rdata", f"A record with {rdlength} bytes at {pos}")
        addrs.append(".".join(str(b) for b in data[pos : pos + 4]))
    elif rtype == TYPE_AAAA:
        if rdlength != 16:
            raise DnsParseError("bad_rdata", f"AAAA record with {rdlength} bytes at {pos}")
        addrs.append(str(ipaddress.IPv6Address(data[pos : pos + 16])))
    elif rtype == TYPE_CNAME:
        target, end = read_name(data, pos)
        if end != pos + rdlength:
            raise DnsParseError("bad_rdata", f"CNAME rdata at {pos} is not exactly one name")
        cnames.append(target)
