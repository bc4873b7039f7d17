"""What a restarted joiner must not emit again: the records it emitted after a held one.

A raw partition's committed offset stops at its oldest held record (holdback.py), so after a
crash the records after it are read again, although they were emitted and committed in
earlier transactions. The offset commit therefore carries, in its metadata, where the stretch
read so far ends and which records in it (offset, index in the message's batch) were still
held: on restart exactly those are joined again, and the others skipped and counted. The
metadata is bounded (Kafka's offset.metadata.max.bytes defaults to 4096); past the bound
only the stretch's end is kept and every record in it is emitted again, counted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

MAX_METADATA_BYTES = 3500
VERSION = 1

Position = tuple[int, int]  # (offset, index of the record in the message's batch)


def encode(end: int, held: Iterable[Position], unknown: bool = False) -> str:
    """``unknown``: which records below ``end`` were emitted is not known (all are again)."""
    positions = sorted(set(held))
    text = json.dumps({"v": VERSION, "end": end, "held": positions}, separators=(",", ":"))
    if not unknown and len(text) <= MAX_METADATA_BYTES:
        return text
    return json.dumps({"v": VERSION, "end": end, "held": None}, separators=(",", ":"))


@dataclass(frozen=True)
class Replay:
    """One partition's re-read stretch: offsets below ``end`` were handled before."""

    end: int
    held: frozenset[Position] | None  # None: not known, every record is emitted again

    def keep(self, offset: int, index: int) -> bool:
        return self.held is None or (offset, index) in self.held


def decode(text: str | None) -> Replay | None:
    """None for no metadata, another writer's, or one this version does not read."""
    if not text:
        return None
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("v") != VERSION:
            return None
        end = int(data["end"])
        held = data["held"]
        positions = None if held is None else frozenset((int(o), int(i)) for o, i in held)
    except (ValueError, KeyError, TypeError):
        return None
    return Replay(end, positions)
