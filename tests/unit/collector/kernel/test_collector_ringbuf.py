"""The ring buffer walker on a memfd laid out like the kernel's mapping of a ringbuf map:
consumer page, producer page, then the data area twice (the kernel maps the same pages
twice; here the fake writes every byte to both copies)."""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator

import pytest

from collector.kernel.ringbuf import BUSY_BIT, DISCARD_BIT, RingBufferReader

PAGE = mmap.PAGESIZE
SIZE = PAGE  # smallest legal ring: one page of data


class FakeRing:
    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self.fd = os.memfd_create("fake-ringbuf")
        os.ftruncate(self.fd, 2 * PAGE + 2 * size)
        self.mem = mmap.mmap(self.fd, 2 * PAGE + 2 * size)
        self.producer = 0

    def _write(self, pos: int, data: bytes) -> None:
        for i, byte in enumerate(data):
            at = (pos + i) % self.size
            self.mem[2 * PAGE + at] = byte
            self.mem[2 * PAGE + self.size + at] = byte

    def push(self, payload: bytes, busy: bool = False, discard: bool = False) -> int:
        """Append one record; returns its position. Publishes the producer position."""
        pos = self.producer
        header = len(payload) | (BUSY_BIT if busy else 0) | (DISCARD_BIT if discard else 0)
        self._write(pos, struct.pack("<II", header, 0) + payload)
        self.producer += (len(payload) + 8 + 7) & ~7
        struct.pack_into("<Q", self.mem, PAGE, self.producer)
        return pos

    def commit(self, pos: int) -> None:
        header = struct.unpack_from("<I", self.mem, 2 * PAGE + pos % self.size)[0]
        self._write(pos, struct.pack("<I", header & ~BUSY_BIT))

    @property
    def consumer(self) -> int:
        return int(struct.unpack_from("<Q", self.mem, 0)[0])

    def close(self) -> None:
        self.mem.close()
        os.close(self.fd)


@pytest.fixture
def ring() -> Iterator[FakeRing]:
    fake = FakeRing()
    yield fake
    fake.close()


def payloads(reader: RingBufferReader, max_records: int = 1 << 30) -> list[bytes]:
    batch = reader.read(max_records)
    return [batch.data[o : o + n] for o, n in batch.spans]


def test_reads_committed_records_and_advances_consumer(ring: FakeRing) -> None:
    ring.push(b"a" * 120)
    ring.push(b"b" * 13)  # odd length: padded to 8 in the ring, exact in the batch
    with RingBufferReader(ring.fd, ring.size) as reader:
        assert payloads(reader) == [b"a" * 120, b"b" * 13]
        assert ring.consumer == ring.producer == 128 + 24
        assert payloads(reader) == []
        assert reader.records_read == 2


def test_stops_at_a_busy_record_until_it_is_committed(ring: FakeRing) -> None:
    ring.push(b"1" * 16)
    busy = ring.push(b"2" * 16, busy=True)
    ring.push(b"3" * 16)
    with RingBufferReader(ring.fd, ring.size) as reader:
        assert payloads(reader) == [b"1" * 16]
        assert ring.consumer == busy
        assert payloads(reader) == []
        ring.commit(busy)
        assert payloads(reader) == [b"2" * 16, b"3" * 16]


def test_discarded_records_are_skipped_and_counted(ring: FakeRing) -> None:
    ring.push(b"x" * 8, discard=True)
    ring.push(b"y" * 8)
    with RingBufferReader(ring.fd, ring.size) as reader:
        batch = reader.read()
        assert batch.discarded == 1
        assert [batch.data[o : o + n] for o, n in batch.spans] == [b"y" * 8]
        assert ring.consumer == ring.producer


def test_max_records_leaves_the_rest_for_the_next_read(ring: FakeRing) -> None:
    for i in range(5):
        ring.push(bytes([i]) * 8)
    with RingBufferReader(ring.fd, ring.size) as reader:
        assert payloads(reader, 2) == [b"\0" * 8, b"\1" * 8]
        assert payloads(reader, 2) == [b"\2" * 8, b"\3" * 8]
        assert payloads(reader) == [b"\4" * 8]


def test_records_wrapping_the_end_come_out_whole(ring: FakeRing) -> None:
    record = 120
    with RingBufferReader(ring.fd, ring.size) as reader:
        seen: list[bytes] = []
        expected: list[bytes] = []
        for i in range(3 * ring.size // (record + 8)):
            body = bytes([i % 251]) * record
            expected.append(body)
            ring.push(body)
            if i % 7 == 6:
                seen += payloads(reader)
        seen += payloads(reader)
        assert seen == expected
        assert ring.producer > 2 * ring.size  # the positions really wrapped


def test_rejects_a_size_that_is_not_a_power_of_two_of_pages(ring: FakeRing) -> None:
    with pytest.raises(ValueError, match="power of 2"):
        RingBufferReader(ring.fd, 3 * PAGE)


def test_runs_of_equal_records_broken_by_other_sizes_and_discards(ring: FakeRing) -> None:
    expected: list[bytes] = []
    for i in range(4):
        expected.append(bytes([i]) * 120)
        ring.push(expected[-1])
    ring.push(b"d" * 120, discard=True)
    expected.append(b"odd" * 11)
    ring.push(expected[-1])
    for i in range(3):
        expected.append(bytes([10 + i]) * 120)
        ring.push(expected[-1])
    with RingBufferReader(ring.fd, ring.size) as reader:
        batch = reader.read()
        assert [batch.data[o : o + n] for o, n in batch.spans] == expected
        assert batch.discarded == 1
        assert ring.consumer == ring.producer
