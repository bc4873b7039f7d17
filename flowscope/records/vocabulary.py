"""The small closed sets of values that several records share."""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

Role = Literal["client", "server", "unknown"]
Transport = Literal["tcp", "udp"]
# How an endpoint was named: a pod (by cgroup for the local end, by IP for the remote end),
# the node itself (host processes, hostNetwork pods), or nothing known.
Attribution = Literal["pod", "host", "node", "unresolved", "external"]
# How a connection end finished (RawTcpConnection.outcome); "open" on interim records.
# OUTCOME_RULES below is the published statement of the rules; collector/tcp/events.py
# (outcome_of) and collector/tcp/_encode.c apply them.
Outcome = Literal[
    "closed",  # FIN handshake (or the peer's FIN and ours)
    "refused",  # RST answered to our SYN
    "timed_out",  # the kernel gave up: SYN retries exhausted, or retransmissions/keepalive
    "connect_timeout",  # the application gave up connecting after 1+ SYN retransmissions
    "cancelled",  # its own side closed it before the handshake, no SYN retransmitted yet
    "reset_by_peer",  # RST received after the handshake
    "reset_locally",  # this side aborted: close() with unread data, SO_LINGER 0
    "unreachable",  # ICMP host/network unreachable
    "aborted",  # killed by an administrator (SOCK_DESTROY, ss -K)
    "error",  # another socket error (see sk_err)
    "open",  # interim record of a connection still open
]
# Outcomes counted as failed connections (failure rates, alerts). reset_locally, cancelled
# and aborted are the application's or an operator's choice, not the network failing them:
# listed in outcomes, not failures. connect_timeout is a failure: the application stopped
# waiting for a peer that did not answer, which is how most network timeouts look.
FAILURE_OUTCOMES: Final[frozenset[Outcome]] = frozenset(
    {"refused", "timed_out", "connect_timeout", "reset_by_peer", "unreachable", "error"}
)

OUTCOME_RULES: Final = (
    "How this connection end finished, from the state its socket closed from, its error "
    "(sk_err) and its SYN retransmissions (syn_retries). "
    "`closed`: an orderly close (FINs). "
    "`refused`: an RST answered the SYN (sk_err 111). "
    "`timed_out`: the kernel gave up (sk_err 110): the SYN retries ran out "
    "(net.ipv4.tcp_syn_retries or TCP_SYNCNT; about 2 minutes by default) or, once "
    "established, retransmissions or keepalive probes went unanswered. "
    "`connect_timeout`: the application gave up: it closed the socket while the handshake was "
    "still under way, with no socket error, after one or more SYN retransmissions "
    "(syn_retries >= 1); its own connect timeout (typically 1-10 s), which is how most "
    "network timeouts look to an application. "
    "`cancelled`: closed by its own side before the handshake completed and before any SYN "
    "was retransmitted (syn_retries 0), e.g. happy eyeballs dropping the slower attempt. "
    "`reset_by_peer`: an RST was received after the handshake (sk_err 104 or 32). "
    "`reset_locally`: this side aborted an established connection (close() with unread "
    "data, SO_LINGER 0). "
    "`unreachable`: an ICMP host or network unreachable (sk_err 101, 112, 113). "
    "`aborted`: destroyed by an administrator (sk_err 103: SOCK_DESTROY, ss -K). "
    "`error`: any other socket error (see sk_err). "
    "`open`: an interim record of a connection still open. "
    "Who gave up on an unanswered connect is in the outcome: `timed_out` the kernel, "
    "`connect_timeout` the application. "
    "Failures in the processors' metrics and alerts: "
    + ", ".join(f"`{o}`" for o in sorted(FAILURE_OUTCOMES))
    + "."
)
# The type of an ``outcome`` field: the published schema carries the rules.
OutcomeField = Annotated[Outcome, msgspec.Meta(description=OUTCOME_RULES)]
PeerClass = Literal[
    "same_zone", "cross_zone", "cross_region", "other_cluster", "private", "internet", "unknown"
]
