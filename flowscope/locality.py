"""How far apart two ends are: the one rule behind ``flowscope.peer.class`` for TCP and DNS."""

from __future__ import annotations

from flowscope.records import Endpoint, PeerClass


def is_unnamed(end: Endpoint) -> bool:
    """An end no metadata names (no workload): only its address can class it."""
    return end.workload_kind is None and end.attribution in ("unresolved", "external")


def zone_class(
    a_region: str | None, a_zone: str | None, b_region: str | None, b_zone: str | None
) -> PeerClass:
    """Peer class of two named ends from their regions and zones; unknown when either lacks one."""
    if a_region is not None and b_region is not None and a_region != b_region:
        return "cross_region"
    if a_zone is not None and b_zone is not None:
        return "same_zone" if a_zone == b_zone else "cross_zone"
    return "unknown"
