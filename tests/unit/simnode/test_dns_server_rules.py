"""simnode's DNS server logic without sockets: rules, answers, resolv.conf rendering."""

from __future__ import annotations

import pytest

from simnode.dns.resolvconf import kubernetes_search, render
from simnode.dns.server import Rules, Server
from simnode.dns.wire import (
    WireError,
    build_query,
    encode_name,
    parse_query,
    parse_response_header,
)


def server() -> Server:
    return Server(
        Rules(
            {
                "names": {
                    "ok.test": {"addrs": ["10.0.0.1", "fd00::1"]},
                    "slow.test": {"addrs": ["10.0.0.2"], "delay_ms": 250},
                    "fail.test": {"rcode": "SERVFAIL"},
                    "silent.test": {"drop": True},
                    "garbage.test": {"malformed": True},
                    "*.wild.test": {"addrs": ["10.0.0.9"]},
                }
            }
        )
    )


def test_answers_per_rule() -> None:
    s = server()
    reply, delay = s.answer(build_query(1, "OK.test"))
    assert reply is not None and delay == 0
    assert parse_response_header(reply) == (1, 0, 1, False)  # only the A record for type A
    reply, delay = s.answer(build_query(2, "slow.test"))
    assert reply is not None and delay == 0.25
    reply, _ = s.answer(build_query(3, "fail.test"))
    assert reply is not None and parse_response_header(reply).rcode == 2
    reply, _ = s.answer(build_query(4, "unknown.test"))
    assert reply is not None and parse_response_header(reply).rcode == 3
    assert s.answer(build_query(5, "silent.test")) == (None, 0.0)
    reply, _ = s.answer(build_query(6, "x.wild.test", 28))
    assert reply is not None and parse_response_header(reply).ancount == 0  # no AAAA
    reply, _ = s.answer(build_query(7, "garbage.test"))
    assert reply is not None and reply[12:14] == b"\xc0\x0c"
    assert s.received["ok.test 1"] == 1 and s.received["x.wild.test 28"] == 1


def test_unparsable_queries_counted() -> None:
    s = server()
    assert s.answer(b"\x00") == (None, 0.0) and s.unparsable == 1


def test_wire_limits() -> None:
    with pytest.raises(WireError):
        encode_name("a" * 64 + ".test")
    with pytest.raises(WireError):
        parse_query(build_query(1, "a.test")[:-1])
    assert parse_query(build_query(9, "a.b")).name == "a.b"


def test_rules_reject_unknown_rcode() -> None:
    with pytest.raises(ValueError, match="NXDOMAIN"):
        Rules({"names": {"x": {"rcode": "NOPE"}}})


def test_resolv_conf_like_the_kubelet() -> None:
    text = render(["10.96.0.10"], kubernetes_search("shop"), ndots=5, options=["timeout:1"])
    assert text == (
        "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local "
        "cluster.local\noptions ndots:5 timeout:1\n"
    )
