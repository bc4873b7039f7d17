"""The worker's lz4 decompressor for aiokafka (processors.core.runtime): same bytes."""

from __future__ import annotations

import importlib
import random
from collections.abc import Iterator
from types import ModuleType

import cramjam
import pytest

from processors.core.runtime import LZ4_DECODE_USERS, use_gil_free_lz4


def payloads() -> list[bytes]:
    rng = random.Random(5)
    row = b'{"client":"shop/Deployment/web%d","bytes":%d},'
    text = b"".join(row % (rng.randrange(30), rng.randrange(10**6)) for _ in range(20_000))
    return [b"", b"x", text, bytes(rng.randrange(256) for _ in range(100_000))]


@pytest.fixture
def patched() -> Iterator[list[ModuleType]]:
    importlib.import_module("lz4.frame")  # the package must be installed: pip install lz4
    modules = [importlib.import_module(name) for name in LZ4_DECODE_USERS]
    saved = [(m, m.__dict__.get("lz4_decode")) for m in modules]
    assert use_gil_free_lz4() == "lz4.frame (GIL released)"
    yield modules
    for module, original in saved:
        if original is not None:
            module.__dict__["lz4_decode"] = original


def test_every_aiokafka_user_of_lz4_decode_is_switched(patched: list[ModuleType]) -> None:
    codec = importlib.import_module("aiokafka.codec")
    with_decoder = [m for m in patched if hasattr(m, "lz4_decode")]
    # The C record parser is what the consumer really uses: it must be among them.
    assert importlib.import_module("aiokafka.record._crecords.default_records") in with_decoder
    assert {m.lz4_decode for m in with_decoder} == {codec.lz4_decode}


def test_same_bytes_as_aiokafkas_own_path_for_kafka_frames(patched: list[ModuleType]) -> None:
    codec = importlib.import_module("aiokafka.codec")
    for data in payloads():
        # Kafka's frames (KIP-57: independent blocks) and cramjam's default frames.
        for frame in (codec.lz4_encode(data), bytes(cramjam.lz4.compress(data))):
            assert codec.lz4_decode(frame) == bytes(cramjam.lz4.decompress(frame)) == data


def test_a_compressed_record_batch_reads_back_through_the_c_parser(
    patched: list[ModuleType],
) -> None:
    records = importlib.import_module("aiokafka.record.default_records")
    memory = importlib.import_module("aiokafka.record.memory_records")
    builder = records.DefaultRecordBatchBuilder(
        magic=2,
        compression_type=records.DefaultRecordBatch.CODEC_LZ4,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=10**7,
    )
    values = payloads()[1:]
    for offset, value in enumerate(values):
        builder.append(offset, timestamp=None, key=b"k", value=value, headers=[])
    batch = memory.MemoryRecords(bytes(builder.build())).next_batch()
    assert batch.compression_type == records.DefaultRecordBatch.CODEC_LZ4
    assert [r.value for r in batch] == values
