"""Batched output: grouping per output partition, Kafka's murmur2, bounds per message."""

from __future__ import annotations

import msgspec
import pytest

from enricher.outbox import MAX_BATCH_BYTES, Outbox, murmur2, partition_of

Sent = list[tuple[str, bytes, str, int]]


def _outbox(max_records: int, partitions: int = 1) -> tuple[Outbox, Sent]:
    sent: Sent = []

    def produce(topic: str, value: bytes, key: str, records: int) -> None:
        sent.append((topic, value, key, records))

    return Outbox(produce, "out", max_records, partitions), sent


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # Kafka's own test vectors (org.apache.kafka.common.utils.UtilsTest.testMurmur2).
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_kafka(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_one_record_per_message_keeps_each_key_and_no_array() -> None:
    box, sent = _outbox(1)
    box.add("a", b'{"x":1}')
    box.add("b", b'{"x":2}')
    assert sent == [("out", b'{"x":1}', "a", 1), ("out", b'{"x":2}', "b", 1)]
    box.flush()
    assert len(sent) == 2 and box.messages == 2 and box.records == 2


def test_records_are_grouped_per_partition_and_keyed_by_their_first_record() -> None:
    box, sent = _outbox(100, partitions=4)
    keys = [f"ns/Deployment/wl-{i}" for i in range(40)]
    for i, key in enumerate(keys):
        box.add(key, b'{"i":%d}' % i)
    assert sent == []  # nothing is sent before the flush (or a full group)
    box.flush()
    assert box.records == 40 and box.messages == len(sent) <= 4
    seen = []
    for _, value, key, records in sent:
        items = msgspec.json.decode(value)
        assert records == len(items)
        part = partition_of(key, 4)
        # Every record in the message belongs on the partition its key (the first) goes to.
        assert {partition_of(keys[item["i"]], 4) for item in items} == {part}
        assert key == keys[items[0]["i"]]
        seen += [item["i"] for item in items]
    assert sorted(seen) == list(range(40))


def test_a_full_group_goes_out_at_once_and_order_is_kept() -> None:
    box, sent = _outbox(3)
    for i in range(7):
        box.add(f"k{i}", b"%d" % i)
    assert [v for _, v, _, _ in sent] == [b"[0,1,2]", b"[3,4,5]"]
    box.flush()
    assert [v for _, v, _, _ in sent][-1] == b"[6]" and box.records == 7


def test_a_batch_stays_below_the_message_size_limit() -> None:
    box, sent = _outbox(1000)
    big = b'"' + b"x" * (MAX_BATCH_BYTES // 5) + b'"'
    for _ in range(12):
        box.add("k", big)
    box.flush()
    assert sum(r for *_, r in sent) == 12 and len(sent) >= 3
    assert all(len(v) < MAX_BATCH_BYTES for _, v, _, _ in sent)
    assert all(len(msgspec.json.decode(v)) == r for _, v, _, r in sent)


def test_a_new_partition_count_flushes_what_was_grouped_under_the_old_one() -> None:
    box, sent = _outbox(100, partitions=1)
    box.add("a", b"1")
    box.partitions = 6
    assert [v for _, v, _, _ in sent] == [b"[1]"] and box.partitions == 6


def test_max_records_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        _outbox(0)
