"""Network impairment on one path of the simulated node: nftables drops.

netem is not available on every kernel (not on the one this is built on); nftables is built
in. ``numgen random mod 100 < N drop`` drops about N% of the matching packets, on the node's
forward hook, where packets between pods of different nodes cross (bridged traffic passes it
through br_netfilter, routed traffic by routing). The table carries the run's id and is
removed when the context ends, on failure too.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from simnode.commands import run, try_run
from simnode.network import netns_path


def _set(addresses: Sequence[str]) -> str:
    return "{ " + ", ".join(addresses) + " }"


def loss_rules(
    table: str,
    sources: Sequence[str],
    destinations: Sequence[str],
    percent: int,
    match: str = "",
    hook: str = "forward",
) -> str:
    """An ``nft -f`` transaction: one table, one filter chain on ``hook``, both directions
    between the two address sets dropping ``percent``% (100: every packet)."""
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in 1..100, got {percent}")
    verdict = "drop" if percent == 100 else f"numgen random mod 100 < {percent} drop"
    extra = f"{match} " if match else ""
    src, dst = _set(sources), _set(destinations)
    return (
        f"table ip {table} {{\n"
        f"  chain {hook} {{\n"
        f"    type filter hook {hook} priority filter; policy accept;\n"
        f"    ip saddr {src} ip daddr {dst} {extra}{verdict}\n"
        f"    ip saddr {dst} ip daddr {src} {extra}{verdict}\n"
        f"  }}\n"
        f"}}\n"
    )


@contextmanager
def path_loss(
    run_id: str,
    sources: Sequence[str],
    destinations: Sequence[str],
    percent: int,
    *,
    match: str = "",
    netns: str | None = None,
    hook: str = "forward",
) -> Iterator[str]:
    """Drop ``percent``% of the packets between the two address sets while the context
    lasts (in ``netns``, a pod's namespace, when given; the node's otherwise). Yields the
    table's name."""
    table = f"fs-{run_id}-loss-{secrets.token_hex(3)}"
    prefix = [] if netns is None else ["nsenter", f"--net={netns_path(netns)}", "--"]
    with tempfile.NamedTemporaryFile("w", suffix=".nft") as rules:
        rules.write(loss_rules(table, sources, destinations, percent, match, hook))
        rules.flush()
        run([*prefix, "nft", "-f", rules.name])
    try:
        yield table
    finally:
        try_run([*prefix, "nft", "delete", "table", "ip", table])
