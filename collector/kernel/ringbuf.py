"""Batch reader of a BPF ring buffer, mmapped straight from Python.

Why not libbpf's ``ring_buffer__poll``: it calls back once per record, and a ctypes callback
costs 5-11 µs (DESIGN.md). Here the map fd is mmapped as the kernel lays it out, the ready
records' headers are walked, all of them are copied out with one slice, and the consumer
position is advanced once per batch: no syscall and no callback per record.

Layout (kernel/bpf/ringbuf.c, the same that libbpf maps):

* offset 0, one page, read-write: ``consumer_pos`` (u64), which only we write;
* offset PAGE_SIZE, read-only: one page holding ``producer_pos`` (u64), then the data pages
  mapped twice in a row, so a record that wraps around the end is contiguous in memory;
* each record: an 8-byte header (u32 length with BUSY bit 31 and DISCARD bit 30, u32 page
  offset), the sample, padding up to 8 bytes.

Ordering: positions and headers are read with native-width ``struct`` formats, which copy
with one aligned 8- or 4-byte load (the ``<`` formats assemble bytes one by one and could
tear); the consumer position is written through a native ``memoryview``, one 8-byte store.
On x86-64 loads are not reordered with other loads, so a header read as committed before
the data is copied makes the copy complete; the consumer position is stored after the
copy, so the kernel cannot reuse the space while we read it. On weakly ordered CPUs (arm64)
this reader would need explicit barriers: it is written for x86-64, like the Makefile.
"""

from __future__ import annotations

import mmap
import os
import select
import struct
import time

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_SIZE = 8

_U64 = struct.Struct("Q")  # native: one aligned load, see the module docstring
_U32 = struct.Struct("I")


class RecordBatch:
    """Records copied out of the ring: ``data[offset:offset+length]`` for each span.

    ``data`` as the ring lays records out (8-byte header, sample, padding to 8 bytes), so the
    spans follow from its headers: the reader does not build them (a tuple per record costs
    more than the native encoder's whole record), :attr:`spans` walks the headers on first
    use, and ``collector.tcp._encode`` walks them in C. Tests may give spans instead (their
    headers are zeros)."""

    __slots__ = ("_count", "_spans", "data", "discarded")

    def __init__(
        self,
        data: bytes,
        spans: list[tuple[int, int]] | None = None,
        discarded: int = 0,
        count: int | None = None,
    ) -> None:
        self.data = data
        self.discarded = discarded
        self._spans = spans
        self._count = count

    @property
    def spans(self) -> list[tuple[int, int]]:
        if self._spans is None:
            self._spans = walk_spans(self.data)
        return self._spans

    @property
    def given_spans(self) -> list[tuple[int, int]] | None:
        """The spans if known, else None: walk ``data``'s headers (what _encode takes)."""
        return self._spans

    def __len__(self) -> int:
        return self._count if self._count is not None else len(self.spans)


def walk_spans(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each sample in records copied out of the ring, discarded skipped."""
    spans: list[tuple[int, int]] = []
    pos = 0
    while pos + HEADER_SIZE <= len(data):
        header: int = _U32.unpack_from(data, pos)[0]
        length = header & ~(BUSY_BIT | DISCARD_BIT)
        if not header & DISCARD_BIT:
            spans.append((pos + HEADER_SIZE, length))
        pos += (length + HEADER_SIZE + 7) & ~7
    return spans


EMPTY = RecordBatch(b"", [], count=0)


class RingBufferReader:
    """Consumes one BPF ring buffer map. Single consumer; not thread-safe."""

    def __init__(self, map_fd: int, size_bytes: int) -> None:
        page = mmap.PAGESIZE
        if size_bytes <= 0 or size_bytes & (size_bytes - 1) or size_bytes % page:
            raise ValueError(f"ring buffer size {size_bytes} is not a power of 2 of pages")
        self._size = size_bytes
        self._mask = size_bytes - 1
        self._consumer = mmap.mmap(
            map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
        )
        try:
            self._producer = mmap.mmap(
                map_fd, page + 2 * size_bytes, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
            )
        except BaseException:
            self._consumer.close()
            raise
        self._data = memoryview(self._producer)[page:]
        self._words = self._data.cast("I")  # native u32 view, for strided header reads
        # The consumer position is stored through a native u64 view: one 8-byte store. Not
        # struct.pack_into, which zeroes its target before writing the value: the kernel,
        # reserving on another CPU in between, read the position as 0, found the ring "full"
        # once the producer was past its size, and dropped the event (about one per million
        # under bench/collector_bench.py, traced with bpf_printk: consumer 0, producer 24 MB).
        self._consumer_pos = memoryview(self._consumer).cast("Q")
        self._pos: int = self._consumer_pos[0]
        # Our own descriptor, so that wait() works whoever closes the map's first one.
        self._fd = os.dup(map_fd)
        self._epoll: select.epoll | None = None  # made on first wait()
        self.records_read = 0
        self.bytes_read = 0

    def wait(self, timeout_s: float, min_bytes: int = 0) -> bool:
        """Block until the kernel signals data with at least ``min_bytes`` waiting, or the
        timeout. True if signalled.

        ``min_bytes``: the program's wakeup threshold (it wakes the reader only once that
        much waits). The registration is edge-triggered, so only a wakeup the program sent
        ends a wait: a ring buffer polls readable whenever any record waits, so
        level-triggered, the few records that arrived while a batch was processed ended
        the next wait at once, and a busy ring was read as a full batch then a tiny one.
        A wakeup sent before the last read (it found less than ``min_bytes`` waiting) is
        stale: wait on. Records below the threshold are read after the timeout."""
        if self._epoll is None:
            self._epoll = select.epoll()
            self._epoll.register(self._fd, select.EPOLLIN | select.EPOLLET)
        deadline = time.monotonic() + timeout_s
        while self._epoll.poll(timeout_s, 1):
            if self.pending_bytes() >= min_bytes:
                return True
            timeout_s = deadline - time.monotonic()
            if timeout_s <= 0:
                return False
        return False

    def pending_bytes(self) -> int:
        return int(_U64.unpack_from(self._producer, 0)[0]) - self._pos

    def pending_records(self) -> int:
        """Committed records waiting now, counted without consuming them (the backlog a
        restarted collector finds in a pinned ring buffer)."""
        producer: int = _U64.unpack_from(self._producer, 0)[0]
        pos = self._pos
        count = 0
        while pos < producer:
            header: int = _U32.unpack_from(self._data, pos & self._mask)[0]
            if header & BUSY_BIT:
                break
            length = header & ~(BUSY_BIT | DISCARD_BIT)
            count += not header & DISCARD_BIT
            pos += (length + HEADER_SIZE + 7) & ~7
        return count

    def read(self, max_records: int = 1 << 30) -> RecordBatch:
        """Copy out every committed record (up to ``max_records``) and release their space."""
        start = self._pos
        producer: int = _U64.unpack_from(self._producer, 0)[0]
        data = self._data
        mask = self._mask
        pos = start
        count = discarded = 0
        while pos < producer and count < max_records:
            header: int = _U32.unpack_from(data, pos & mask)[0]
            if header & BUSY_BIT:
                break  # reserved, not yet submitted: later records wait for it too
            length = header & ~(BUSY_BIT | DISCARD_BIT)
            stride = (length + HEADER_SIZE + 7) & ~7
            if header & DISCARD_BIT:
                discarded += 1
                pos += stride
                continue
            # Fast path: the records that follow are usually the same size. Read their
            # headers with one strided slice (one C-level pass) and take the whole run of
            # committed records of this length without a Python call per header.
            limit = min((producer - pos) // stride, max_records - count)
            words = self._words[(pos & mask) >> 2 :: stride >> 2][:limit]
            run = 0
            for word in words.tolist():
                if word != length:
                    break
                run += 1
            if run == 0:  # cannot happen (the first header was read committed); be safe
                run = 1
            count += run
            pos += run * stride
        if pos == start:
            return EMPTY
        offset = start & mask
        # pos - start <= size and offset < size: the slice stays in the double mapping.
        blob = bytes(data[offset : offset + (pos - start)])
        self._consumer_pos[0] = pos
        self._pos = pos
        self.records_read += count
        self.bytes_read += pos - start
        return RecordBatch(blob, None, discarded, count)

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._words.release()
        self._data.release()
        self._consumer_pos.release()
        self._producer.close()
        self._consumer.close()

    def __enter__(self) -> RingBufferReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
