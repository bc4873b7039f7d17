"""Which packets the DNS programs report, on real sockets over IPv6 and IPv4 loopback: the
in-place pre-filter (bpf/dns.bpf.c surely_not_dns) must pass every packet on the DNS port,
UDP and TCP, both directions, and nothing else."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest

from collector.dns.abi import DecodeStats, DnsPacket, clock_offset_ns, decode_batch
from collector.dns.settings import DEFAULT_DNS_BPF_OBJECT
from collector.dns.source import DnsSource
from collector.settings import default_cgroup_root

# A query for "a.test" A, and its answer with no records (only the header differs).
QUERY = bytes.fromhex("beef01000001000000000000") + b"\x01a\x04test\x00" + b"\x00\x01\x00\x01"
ANSWER = bytes.fromhex("beef81800001000000000000") + QUERY[12:]


def free_udp_port(host: str, family: socket.AddressFamily) -> int:
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def dns_port() -> int:
    # Free for UDP and TCP on both loopbacks, so no other local traffic uses it meanwhile.
    for _ in range(20):
        port = free_udp_port("::1", socket.AF_INET6)
        try:
            for fam, host, kind in (
                (socket.AF_INET6, "::1", socket.SOCK_STREAM),
                (socket.AF_INET, "127.0.0.1", socket.SOCK_DGRAM),
                (socket.AF_INET, "127.0.0.1", socket.SOCK_STREAM),
            ):
                with socket.socket(fam, kind) as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue
    pytest.fail("no port free for UDP and TCP on both loopbacks")


@pytest.fixture(scope="module")
def source(dns_port: int, bpf_built: None) -> Iterator[DnsSource]:
    with DnsSource(DEFAULT_DNS_BPF_OBJECT, default_cgroup_root(), port=dns_port) as src:
        yield src


def drain(source: DnsSource, client_port: int, want: int, timeout_s: float = 5) -> list[DnsPacket]:
    """The packets to or from ``client_port`` (this test's client socket, whatever its peer)
    until ``want`` arrived, and a moment more for extras."""
    stats = DecodeStats()
    got: list[DnsPacket] = []
    deadline = time.monotonic() + timeout_s
    settle = None
    while time.monotonic() < deadline and (settle is None or time.monotonic() < settle):
        source.wait(0.05)
        for p in decode_batch(source.read(), clock_offset_ns(), stats):
            if client_port in (p.src_port, p.dst_port):
                got.append(p)
        if len(got) >= want and settle is None:
            settle = time.monotonic() + 0.3
    assert stats.decode_errors == 0
    return got


@pytest.mark.parametrize(
    ("family", "host"),
    [(socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")],
    ids=["ipv6", "ipv4"],
)
def test_udp_on_the_dns_port_both_ways_and_nothing_else(
    source: DnsSource, dns_port: int, family: socket.AddressFamily, host: str
) -> None:
    other = free_udp_port(host, family)
    with (
        socket.socket(family, socket.SOCK_DGRAM) as server,
        socket.socket(family, socket.SOCK_DGRAM) as client,
        socket.socket(family, socket.SOCK_DGRAM) as bystander,
    ):
        server.bind((host, dns_port))
        bystander.bind((host, other))
        source.read()  # start from here
        client.sendto(QUERY, (host, dns_port))
        data, peer = server.recvfrom(512)
        assert data == QUERY
        server.sendto(ANSWER, peer)
        assert client.recv(512) == ANSWER
        client.sendto(QUERY, (host, other))  # same bytes, another port: not DNS here
        assert bystander.recv(512) == QUERY
        packets = drain(source, client.getsockname()[1], want=4)
    # Each datagram leaves one socket and reaches another: egress + ingress, each way.
    seen = sorted((p.egress, p.dst_port == dns_port, p.payload) for p in packets)
    assert seen == sorted(
        [(True, True, QUERY), (False, True, QUERY), (True, False, ANSWER), (False, False, ANSWER)]
    )
    assert {(p.family, p.transport) for p in packets} == {(6 if host == "::1" else 4, "udp")}
    assert all(p.payload_len == len(p.payload) for p in packets)


def test_tcp_on_the_dns_port_reports_data_segments_only(source: DnsSource, dns_port: int) -> None:
    framed = struct.pack("!H", len(QUERY)) + QUERY
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as listener:
        listener.bind(("::1", dns_port))
        listener.listen(1)
        source.read()
        with socket.create_connection(("::1", dns_port)) as client:
            conn, _ = listener.accept()
            with conn:
                client.sendall(framed)
                got = b""
                while len(got) < len(framed):
                    got += conn.recv(512)
                assert got == framed
            client_port = client.getsockname()[1]
        packets = drain(source, client_port, want=2)
    # The handshake, ACKs and FINs carry no DNS bytes: only the query, out and in.
    assert sorted((p.egress, p.payload) for p in packets) == [(False, framed), (True, framed)]
    assert {(p.family, p.transport) for p in packets} == {(6, "tcp")}
