"""The strict DNS parser: valid messages, hostile ones, and fuzzing (hypothesis)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.dns.parser import DnsParseError, Message, parse, rcode_name, read_name, type_name
from simnode.dns.wire import build_query, build_response, encode_name, parse_query


def header(
    txid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack("!HHHHHH", txid, flags, qd, an, ns, ar)


def response(name: str, rcode: int, addrs: list[str], qtype: int = 1) -> bytes:
    query = build_query(7, name, qtype)
    return build_response(query, parse_query(query), rcode, addrs)


def test_query() -> None:
    msg = parse(build_query(0xBEEF, "www.Example.com", 28))
    assert msg.header.txid == 0xBEEF and not msg.header.is_response
    assert msg.question is not None
    assert msg.question.name == "www.Example.com"  # case kept (0x20 randomisation)
    assert type_name(msg.question.qtype) == "AAAA" and msg.complete


def test_response_with_compressed_answers() -> None:
    msg = parse(response("web.default.svc.cluster.local", 0, ["10.0.0.1", "10.0.0.2"]))
    assert msg.header.is_response and msg.header.ancount == 2
    assert msg.answer_addrs == ("10.0.0.1", "10.0.0.2")
    assert rcode_name(msg.rcode) == "NOERROR"


def test_aaaa_and_cname_answers() -> None:
    body = header(flags=0x8180, an=2) + encode_name("a.test") + struct.pack("!HH", 28, 1)
    body += b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 60, 4) + b"\x01b\xc0\x0e"  # b.test
    body += b"\xc0\x0c" + struct.pack("!HHIH", 28, 1, 60, 16) + bytes(15) + b"\x01"
    msg = parse(body)
    assert msg.cnames == ("b.test",)
    assert msg.answer_addrs == ("::1",)


def test_nxdomain_servfail_and_unknown_codes() -> None:
    assert rcode_name(parse(response("x.test", 3, [])).rcode) == "NXDOMAIN"
    assert rcode_name(parse(response("x.test", 2, [])).rcode) == "SERVFAIL"
    assert rcode_name(4000) == "RCODE4000" and type_name(65534) == "TYPE65534"


def test_edns_extended_rcode() -> None:
    # BADVERS (16): rcode 0 in the header, upper bits 1 in the OPT TTL's top byte.
    body = header(flags=0x8100, ar=1) + encode_name("x.test") + struct.pack("!HH", 1, 1)
    body += b"\x00" + struct.pack("!HHIH", 41, 1232, 1 << 24, 0)
    assert rcode_name(parse(body).rcode) == "BADVERS"


def test_escapes_odd_label_bytes() -> None:
    body = header() + b"\x03a.b\x02\x00\xff\x00" + struct.pack("!HH", 1, 1)
    msg = parse(body)
    assert msg.question is not None and msg.question.name == "a\\046b.\\000\\255"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x12\x34\x01", "short_header"),
        (header() + b"\xc0\x0c" + b"\x00\x01\x00\x01", "bad_pointer"),  # points to itself
        (header() + b"\xc0\x20" + b"\x00\x01\x00\x01", "bad_pointer"),  # forward
        # Two names pointing at each other: the second pointer is not below the first.
        (
            header(qd=2) + b"\x01a\xc0\x14\x00\x01\x00\x01" + b"\xc0\x0c\x00\x01\x00\x01",
            "bad_pointer",
        ),
        (header() + b"\x41" + b"a" * 65 + b"\x00\x00\x01\x00\x01", "bad_label"),
        (header() + b"\x81a\x00\x00\x01\x00\x01", "bad_label"),
        (header() + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01", "name_too_long"),
        (header() + b"\x01a\x00\x00\x01", "truncated"),
        (header() + b"\x05ab", "truncated"),
        (
            header(an=1) + b"\x01a\x00\x00\x01\x00\x01" + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00"
            b"\x3c\x00\x05" + b"\x01\x02\x03\x04\x05",
            "bad_rdata",
        ),  # A with 5 bytes
        (header() + b"\x01a\x00\x00\x01\x00\x01" + b"junk", "trailing_bytes"),
        (header(an=3) + b"\x01a\x00\x00\x01\x00\x01", "truncated"),  # counts lie
    ],
)
def test_hostile_messages_rejected_with_reason(body: bytes, reason: str) -> None:
    with pytest.raises(DnsParseError) as err:
        parse(body)
    assert err.value.reason == reason
    if len(body) >= 12:
        assert err.value.header is not None and err.value.header.txid == 0x1234


def test_pointer_chain_is_bounded() -> None:
    # A long chain of valid backward pointers: each hop goes lower, the walk ends.
    body = bytearray(header() + b"\x01a\x00")
    for _ in range(200):
        target = len(body) - 2 if len(body) > 15 else 12
        body += struct.pack("!H", 0xC000 | target)
    with pytest.raises(DnsParseError):
        read_name(bytes(body), len(body) - 2)


def test_every_truncation_is_an_error_or_a_clipped_message() -> None:
    full = response("web.default.svc.cluster.local", 0, ["10.0.0.1", "10.0.0.2"])
    question_end = 12 + len(encode_name("web.default.svc.cluster.local")) + 4
    for cut in range(len(full)):
        with pytest.raises(DnsParseError):
            parse(full[:cut])
        if cut < question_end:
            with pytest.raises(DnsParseError):
                parse(full[:cut], clipped=True)
        else:
            msg = parse(full[:cut], clipped=True)
            assert msg.question is not None and msg.header.ancount == 2
            assert not msg.complete


# -- fuzzing -----------------------------------------------------------------------------

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_or_error(data: bytes, clipped: bool = False) -> Message | DnsParseError:
    try:
        return parse(data, clipped)
    except DnsParseError as exc:
        return exc


@FUZZ
@given(st.binary(max_size=600), st.booleans())
def test_fuzz_random_bytes_never_escape(data: bytes, clipped: bool) -> None:
    _parse_or_error(data, clipped)


labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
names = st.lists(labels, min_size=1, max_size=6).map(".".join)


@FUZZ
@given(
    names,
    st.sampled_from([1, 28]),
    st.sampled_from([0, 2, 3, 5]),
    st.lists(st.ip_addresses(v=4).map(str), max_size=5),
)
def test_fuzz_valid_messages_round_trip(
    name: str, qtype: int, rcode: int, addrs: list[str]
) -> None:
    data = response(name, rcode, addrs, qtype)
    msg = parse(data)
    assert msg.question is not None and msg.question.name == name
    assert msg.rcode == rcode
    expected = addrs if rcode == 0 and qtype == 1 else []
    assert list(msg.answer_addrs) == expected


@FUZZ
@given(
    names,
    st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), min_size=1, max_size=8),
    st.booleans(),
)
def test_fuzz_mutated_messages_never_escape(
    name: str, flips: list[tuple[int, int]], clipped: bool
) -> None:
    data = bytearray(response(name, 0, ["10.0.0.1", "10.0.0.2"]))
    for position, value in flips:
        data[position % len(data)] = value
    result = _parse_or_error(bytes(data), clipped)
    if isinstance(result, Message):
        assert result.header.txid == struct.unpack_from("!H", data)[0]


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.binary(min_size=1, max_size=1).map(lambda b: bytes([b[0] | 0xC0]) + b"\x0c"),
            st.integers(0, 0x3FFF).map(lambda p: struct.pack("!H", 0xC000 | p)),
            labels.map(lambda s: bytes([len(s)]) + s.encode()),
            st.just(b"\x00"),
        ),
        max_size=40,
    ),
    st.integers(0, 5),
    st.integers(0, 5),
)
def test_fuzz_hostile_name_soup(parts: list[bytes], qd: int, an: int) -> None:
    """Pointers anywhere, labels, roots: loops and forward jumps must all be refused."""
    _parse_or_error(header(qd=qd, an=an) + b"".join(parts))
    _parse_or_error(header(qd=qd, an=an) + b"".join(parts), clipped=True)


def test_min_ttl_of_the_answer_section() -> None:
    import struct

    from collector.dns.parser import parse
    from simnode.dns.wire import build_query, build_response, encode_name, parse_query

    query = build_query(7, "api.example.com")
    response = build_response(query, parse_query(query), 0, ["192.88.99.1"], ttl=300)
    assert parse(response).min_ttl == 300
    # A CNAME with a shorter TTL bounds the chain; a TTL with the top bit set counts as 0.
    cname = struct.pack("!HHHIH", 0xC00C, 5, 1, 20, len(encode_name("x.cdn.test")))
    body = bytearray(response + cname + encode_name("x.cdn.test"))
    struct.pack_into("!H", body, 6, 2)
    assert parse(bytes(body)).min_ttl == 20
    struct.pack_into("!I", body, len(response) + 6, 2**31)
    assert parse(bytes(body)).min_ttl == 0
    assert parse(query).min_ttl is None
