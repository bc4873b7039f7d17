"""Query/response matching per observing socket, timeouts, retransmissions, oddities."""

from __future__ import annotations

from collector.dns.abi import DnsPacket
from collector.dns.matcher import Matcher, QueryResult
from collector.dns.parser import DnsParseError, Message, parse
from simnode.dns.wire import build_query, build_response, parse_query

CLIENT = ("10.244.0.2", 40000)
SERVER = ("10.244.0.3", 53)
CLIENT_CG, SERVER_CG = 111, 222
MS = 1_000_000


def packet(
    t_ms: int, egress: bool, src: tuple[str, int], dst: tuple[str, int], cgroup: int, payload: bytes
) -> DnsPacket:
    return DnsPacket(
        t_ms * MS + 1_700_000_000 * 10**9,
        t_ms * MS,
        cgroup,
        4,
        "udp",
        egress,
        src[0],
        src[1],
        dst[0],
        dst[1],
        None,
        None,
        len(payload),
        payload,
    )


def parsed(data: bytes) -> Message | DnsParseError:
    try:
        return parse(data)
    except DnsParseError as exc:
        return exc


def exchange(
    m: Matcher, name: str, txid: int, t0: int, t1: int, rcode: int = 0, answer: bytes | None = None
) -> list[QueryResult]:
    """The four packets of one exchange, as both sockets see it."""
    q = build_query(txid, name)
    r = answer if answer is not None else build_response(q, parse_query(q), rcode, ["1.2.3.4"])
    out: list[QueryResult] = []
    for p in (
        packet(t0, True, CLIENT, SERVER, CLIENT_CG, q),
        packet(t0, False, CLIENT, SERVER, SERVER_CG, q),
        packet(t1, True, SERVER, CLIENT, SERVER_CG, r),
        packet(t1, False, SERVER, CLIENT, CLIENT_CG, r),
    ):
        results, _ = m.observe(p, parsed(p.payload))
        out += results
    return out


def test_both_ends_answered_with_latency() -> None:
    m = Matcher(timeout_s=1)
    results = exchange(m, "a.test", 5, 100, 130, rcode=3)
    assert sorted(r.role for r in results) == ["client", "server"]
    for r in results:
        assert r.outcome == "answered" and r.latency_ns == 30 * MS
        assert r.message is not None and r.message.rcode == 3
    client = next(r for r in results if r.role == "client")
    assert client.query.cgroup_id == CLIENT_CG and client.query.remote == SERVER
    server = next(r for r in results if r.role == "server")
    assert server.query.cgroup_id == SERVER_CG and server.query.remote == CLIENT
    assert len(m) == 0 and m.stats.answered == 2


def test_timeout_only_after_the_wait_then_late_response_counted() -> None:
    m = Matcher(timeout_s=1)
    q = build_query(9, "slow.test")
    m.observe(packet(0, True, CLIENT, SERVER, CLIENT_CG, q), parsed(q))
    assert m.expire(999 * MS) == []
    (result,) = m.expire(1000 * MS)
    assert result.outcome == "timeout" and result.role == "client" and result.response is None
    r = build_response(q, parse_query(q), 0, [])
    assert m.observe(packet(1500, False, SERVER, CLIENT, CLIENT_CG, r), parsed(r))[0] == []
    assert m.stats.late_responses == 1 and m.stats.timeouts == 1


def test_retransmission_is_one_query_timed_from_the_first() -> None:
    m = Matcher(timeout_s=5)
    q = build_query(9, "a.test")
    m.observe(packet(0, True, CLIENT, SERVER, CLIENT_CG, q), parsed(q))
    m.observe(packet(1000, True, CLIENT, SERVER, CLIENT_CG, q), parsed(q))
    r = build_response(q, parse_query(q), 0, [])
    (result,), _ = m.observe(packet(1010, False, SERVER, CLIENT, CLIENT_CG, r), parsed(r))
    assert result.attempts == 2 and result.latency_ns == 1010 * MS


def test_other_question_with_same_id_is_not_the_answer() -> None:
    m = Matcher(timeout_s=5)
    q = build_query(9, "a.test")
    m.observe(packet(0, True, CLIENT, SERVER, CLIENT_CG, q), parsed(q))
    spoof_q = build_query(9, "evil.test")
    spoof = build_response(spoof_q, parse_query(spoof_q), 0, ["6.6.6.6"])
    assert m.observe(packet(1, False, SERVER, CLIENT, CLIENT_CG, spoof), parsed(spoof))[0] == []
    assert m.stats.question_mismatches == 1 and len(m) == 1


def test_case_randomised_answer_matches() -> None:
    m = Matcher(timeout_s=5)
    q = build_query(9, "a.TeSt")
    m.observe(packet(0, True, CLIENT, SERVER, CLIENT_CG, q), parsed(q))
    q2 = build_query(9, "A.test")
    r = build_response(q2, parse_query(q2), 0, [])
    assert len(m.observe(packet(1, False, SERVER, CLIENT, CLIENT_CG, r), parsed(r))[0]) == 1


def test_response_through_nat_matches_on_the_client() -> None:
    """Egress query went to the backend pod; the response comes from the ClusterIP."""
    m = Matcher(timeout_s=5)
    q = build_query(9, "a.test")
    m.observe(packet(0, True, CLIENT, SERVER, CLIENT_CG, q), parsed(q))
    r = build_response(q, parse_query(q), 0, [])
    results, _ = m.observe(packet(2, False, ("10.96.0.10", 53), CLIENT, CLIENT_CG, r), parsed(r))
    assert len(results) == 1 and results[0].response is not None
    assert results[0].response.src_addr == "10.96.0.10"


def test_malformed_response_matched_by_id() -> None:
    m = Matcher(timeout_s=5)
    q = build_query(0x4242, "garbage.test")
    m.observe(packet(0, True, CLIENT, SERVER, CLIENT_CG, q), parsed(q))
    bad = b"\x42\x42\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"
    (result,), _ = m.observe(packet(3, False, SERVER, CLIENT, CLIENT_CG, bad), parsed(bad))
    assert result.outcome == "malformed" and result.malformed_reason == "bad_pointer"
    assert result.latency_ns == 3 * MS


def test_malformed_query_and_headerless_packet() -> None:
    m = Matcher(timeout_s=5)
    bad_q = b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab"
    (result,), _ = m.observe(packet(0, True, CLIENT, SERVER, CLIENT_CG, bad_q), parsed(bad_q))
    assert result.outcome == "malformed" and result.question is None and result.txid == 7
    assert m.observe(packet(0, True, CLIENT, SERVER, CLIENT_CG, b"\x01"), parsed(b"\x01")) == (
        [],
        None,
    )
    assert m.stats.malformed_packets == 1 and m.stats.reasons == {"truncated": 1, "short_header": 1}


def test_servers_keep_clients_apart() -> None:
    """Two clients using the same port and id on one server: two pending queries."""
    m = Matcher(timeout_s=5)
    q = build_query(1, "a.test")
    other = ("10.244.0.9", CLIENT[1])
    m.observe(packet(0, False, CLIENT, SERVER, SERVER_CG, q), parsed(q))
    m.observe(packet(0, False, other, SERVER, SERVER_CG, q), parsed(q))
    assert len(m) == 2 and m.stats.retransmissions == 0


def test_full_table_evicts_oldest_and_counts() -> None:
    m = Matcher(timeout_s=5, max_pending=2)
    for txid in range(3):
        q = build_query(txid, "a.test")
        m.observe(packet(txid, True, CLIENT, SERVER, CLIENT_CG, q), parsed(q))
    assert len(m) == 2 and m.stats.evicted == 1 and m.stats.queries == 3
    assert [r.txid for r in m.flush()] == [1, 2]
