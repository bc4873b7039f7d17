"""What the worker's process needs from its interpreter and its Kafka client before faust
starts: codecs aiokafka must have, its lz4 path replaced by one that releases the GIL, and two
interpreter settings. Kept apart from the faust wiring (app.py): these are process-wide."""

from __future__ import annotations

import gc
import importlib
import sys
from typing import Any, cast

from processors import ProcessorsError


class MissingCodec(ProcessorsError, RuntimeError):
    """aiokafka cannot decompress what flowscope's producers write."""


def check_codecs() -> None:
    """Fail at start, not at the first fetch: without cramjam, aiokafka cannot read lz4/zstd
    batches (flowscope's producers write lz4) and the fetcher crashes the whole worker."""
    # importlib: aiokafka ships no type information (and is not in mypy's overrides).
    codec = importlib.import_module("aiokafka.codec")
    if not (codec.has_lz4() and codec.has_zstd()):
        raise MissingCodec(
            "aiokafka cannot decompress lz4/zstd: install cramjam (pip install 'aiokafka[lz4]')"
        )


# Every module of the pinned aiokafka that binds lz4_decode by name (checked by a unit test).
LZ4_DECODE_USERS = (
    "aiokafka.codec",
    "aiokafka.record.default_records",
    "aiokafka.record.legacy_records",
    "aiokafka.record._crecords.default_records",
    "aiokafka.record._crecords.legacy_records",
    "aiokafka.protocol.message",
)


def use_gil_free_lz4() -> str:
    """Make aiokafka decompress lz4 with ``lz4.frame`` (the same bytes), which releases the
    GIL; returns the decompressor in use.

    Measured (bench/processors_bench.py): faust runs aiokafka in its own thread, and
    aiokafka's lz4 path (cramjam, then a ``bytes`` copy) holds the GIL for the whole
    decompression, so that thread's work was serialised with the agent's: the worker's wall
    time per record equalled its process CPU per record. librdkafka (under Quix Streams)
    decompresses in C threads that never take the GIL. With ``lz4.frame`` the decompression
    overlaps the agent on the second core. Without the package, aiokafka's own path stays.
    """
    try:
        lz4_frame = importlib.import_module("lz4.frame")
    except ImportError:
        return "cramjam (lz4 not installed: decompression holds the GIL)"
    decompress = lz4_frame.decompress

    def lz4_decode(payload: Any) -> bytes:
        return cast(bytes, decompress(payload))

    for name in LZ4_DECODE_USERS:
        module = importlib.import_module(name)
        if hasattr(module, "lz4_decode"):
            module.__dict__["lz4_decode"] = lz4_decode
    return "lz4.frame (GIL released)"


def tune_interpreter() -> None:
    """Two interpreter settings for a worker whose agent holds the GIL most of the time beside
    aiokafka's fetcher thread. Measured with bench/processors_bench.py (faust / Quix Streams
    records per CPU second, same topic, runs alternating): defaults 0.82-0.97 (median 0.90,
    5 runs); the switch interval alone 0.97-1.18 (1.02, 3 runs); the GC threshold alone
    0.90-1.01 (0.99, 3 runs); both 0.82-1.04 (1.02, 4 runs).

    - A 50 ms GIL switch interval (5 ms by default): the two threads hand the GIL over ten
      times less often; the fetcher (heartbeats included) still runs within 50 ms, far inside
      the session timeout.
    - A young-generation GC threshold of 20,000 allocations (700): the records are not tracked
      by the GC (gc=False), but the lists, tuples and dicts of each batch are, and with the
      default a collection ran every few hundred records over the whole young heap."""
    sys.setswitchinterval(0.05)
    gc.set_threshold(20_000, 50, 100)
