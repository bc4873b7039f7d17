"""Records held back because the metadata that names them has not arrived yet. No I/O.

The metadata publisher and the collectors are not in step: a collector can report a
connection of a pod that started a moment ago before the publisher has written that pod.
Such a record waits here, keyed by what it misses (``ip:<addr>`` or ``uid:<pod uid>``), for
at most the hold time; a metadata change to its key releases it at once. When the time is up
it is released anyway and emitted as unresolved.

Offsets: a held record's offset must not be committed, or a crash would lose it. Per
partition a heap of held offsets (deleted lazily) gives the oldest; the joiner commits no
further than that. A batched message puts several records at one offset: the offset stays
held until the last of them is released.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

PartitionKey = tuple[str, int]


@dataclass(eq=False)
class Held(Generic[T]):
    item: T
    partition: PartitionKey
    offset: int
    deadline_ns: int  # monotonic clock
    key: str
    done: bool = field(default=False)
    index: int = 0  # the record's place in its message's batch (replay.py)


class Holdback(Generic[T]):
    def __init__(self, hold_ns: int, max_records: int) -> None:
        self.hold_ns = hold_ns
        self.max_records = max_records
        self._by_key: dict[str, list[Held[T]]] = {}
        # Per partition, offset -> how many records from that offset are held.
        self._by_partition: dict[PartitionKey, dict[int, int]] = {}
        # Per partition, the held records in arrival order (a dict as an ordered set).
        self._held_by_partition: dict[PartitionKey, dict[Held[T], None]] = {}
        self._offsets: dict[PartitionKey, list[int]] = {}  # heaps, may hold released offsets
        self._fifo: deque[Held[T]] = deque()  # arrival order = deadline order
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def enabled(self) -> bool:
        return self.hold_ns > 0 and self.max_records > 0

    def add(
        self,
        item: T,
        key: str,
        partition: PartitionKey,
        offset: int,
        now_ns: int,
        deadline_ns: int | None = None,
        index: int = 0,
    ) -> bool:
        """Hold ``item`` until ``key`` changes or the hold time is up. False when full."""
        if self._count >= self.max_records:
            return False
        held = Held(
            item,
            partition,
            offset,
            deadline_ns if deadline_ns is not None else now_ns + self.hold_ns,
            key,
            index=index,
        )
        self._by_key.setdefault(key, []).append(held)
        part = self._by_partition.setdefault(partition, {})
        if offset in part:
            part[offset] += 1
        else:
            part[offset] = 1
            heapq.heappush(self._offsets.setdefault(partition, []), offset)
        self._held_by_partition.setdefault(partition, {})[held] = None
        self._fifo.append(held)
        self._count += 1
        return True

    def _take(self, held: Held[T]) -> None:
        held.done = True
        self._count -= 1
        del self._held_by_partition[held.partition][held]
        part = self._by_partition[held.partition]
        left = part[held.offset] - 1
        if left:
            part[held.offset] = left
            return
        del part[held.offset]
        if not part:
            del self._by_partition[held.partition]
            del self._offsets[held.partition]
            del self._held_by_partition[held.partition]

    def release_changed(self, keys: set[str]) -> list[Held[T]]:
        """Held records waiting for any of ``keys``, removed from the buffer."""
        if not self._count or not keys:
            return []
        out: list[Held[T]] = []
        # Iterate the smaller side: a metadata burst can change many keys nobody waits for.
        if len(keys) < len(self._by_key):
            hit = [k for k in keys if k in self._by_key]
        else:
            hit = [k for k in self._by_key if k in keys]
        for key in hit:
            for held in self._by_key.pop(key):
                self._take(held)
                out.append(held)
        return out

    def release_expired(self, now_ns: int) -> list[Held[T]]:
        out: list[Held[T]] = []
        fifo = self._fifo
        while fifo and (fifo[0].done or fifo[0].deadline_ns <= now_ns):
            held = fifo.popleft()
            if held.done:
                continue
            self._take(held)
            self._unkey(held)
            out.append(held)
        return out

    def release_partitions(self, partitions: set[PartitionKey]) -> list[Held[T]]:
        """Everything held from these partitions (they are being revoked), oldest first."""
        out: list[Held[T]] = []
        for part in partitions:
            waiting = list(self._held_by_partition.get(part, ()))
            waiting.sort(key=lambda h: h.offset)  # stable: a batch's records keep their order
            for held in waiting:
                self._take(held)
                self._unkey(held)
                out.append(held)
        return out

    def release_all(self) -> list[Held[T]]:
        return self.release_partitions(set(self._by_partition))

    def _unkey(self, held: Held[T]) -> None:
        waiting = self._by_key.get(held.key)
        if waiting is None:
            return
        waiting.remove(held)
        if not waiting:
            del self._by_key[held.key]

    def positions(self, partition: PartitionKey) -> list[tuple[int, int]]:
        """(offset, index) of every record held from ``partition``."""
        return [(h.offset, h.index) for h in self._held_by_partition.get(partition, ())]

    def oldest_offset(self, partition: PartitionKey) -> int | None:
        """The smallest offset still held for ``partition``: commits must stop before it."""
        part = self._by_partition.get(partition)
        if not part:
            return None
        heap = self._offsets[partition]
        while heap[0] not in part:
            heapq.heappop(heap)
        return heap[0]
