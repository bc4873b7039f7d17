"""DNS observability: every query and answer of every local socket, matched in user space.

bpf/dns.bpf.c reports each DNS packet (UDP, and TCP on the DNS port) with the socket's
cgroup; here the packets are decoded (:mod:`collector.dns.abi`), parsed strictly
(:mod:`collector.dns.parser`), matched query to response with timeouts
(:mod:`collector.dns.matcher`), search-path expansions are marked
(:mod:`collector.dns.search`), names hashed or dropped on request
(:mod:`collector.dns.privacy`), and one :class:`flowscope.records.RawDnsQuery` per query per
observing end goes to ``<prefix>.raw.dns`` (:mod:`collector.dns.pipeline`).
"""
