"""The small closed sets of values that several records share."""

from __future__ import annotations

from typing import Literal

Role = Literal["client", "server", "unknown"]
# How an endpoint was named: a pod (by cgroup for the local end, by IP for the remote end),
# the node itself (host processes, hostNetwork pods), or nothing known.
Attribution = Literal["pod", "host", "node", "unresolved", "external"]
# How a connection end finished (RawTcpConnection.outcome); "open" on interim records.
Outcome = Literal[
    "closed",  # FIN handshake (or the peer's FIN and ours)
    "refused",  # RST answered to our SYN
    "timed_out",  # the kernel gave up: SYN retries exhausted, or retransmissions/keepalive
    "reset_by_peer",  # RST received after the handshake
    "reset_locally",  # this side aborted: close() with unread data, SO_LINGER 0
    "unreachable",  # ICMP host/network unreachable
    "aborted",  # killed by an administrator (SOCK_DESTROY, ss -K)
    "abandoned",  # the application closed it before the handshake completed
    "error",  # another socket error (see sk_err)
    "open",  # interim record of a connection still open
]
PeerClass = Literal[
    "same_zone", "cross_zone", "cross_region", "other_cluster", "private", "internet", "unknown"
]
