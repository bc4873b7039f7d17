"""The same aggregation run by Quix Streams (the alternative a user would pick).

Run by bench/processors_bench.py with an interpreter that has quixstreams installed (it pins
an older confluent-kafka than flowscope's, so it lives in its own virtualenv). Reads the bench
topic from the start, feeds every message to the same pure ConnectionProcessor the faust
worker uses, and prints one JSON line: records, span_s, records_per_s, CPU per record (the
whole process, librdkafka's threads included, and the handling thread), quixstreams version.

    <quix-python> bench/processors_quix.py BOOTSTRAP TOPIC EXPECTED_RECORDS
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quixstreams
from quixstreams import Application, message_context

from processors.core.stage import Source
from processors.cost.prices import load_price_table
from processors.tcp.processor import ConnectionProcessor

REPO = Path(__file__).resolve().parents[1]
S = 1_000_000_000


def main() -> int:
    bootstrap, topic_name, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
    processor = ConnectionProcessor(
        window_ns=10 * S,
        grace_ns=5 * S,
        idle_allowance_ns=3600 * S,
        prices=load_price_table(REPO / "config" / "prices.yaml"),
    )
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"bench-quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        state_dir=str(REPO / ".state" / "bench-quix"),
    )
    topic = app.topic(topic_name, value_deserializer="bytes", key_deserializer="bytes")
    sdf = app.dataframe(topic)

    def aggregate(value: bytes) -> None:
        ctx = message_context()
        processor.handle(value, Source(topic_name, ctx.partition, ctx.offset, None), time.time_ns())
        if processor.aggregator.counters.records >= expected:
            app.stop()

    sdf.update(aggregate)
    app.run()
    records = processor.aggregator.counters.records
    # The span the faust worker reports too (processors/core/stage.py): first to last message.
    span = processor.handling_span()
    seconds = span["handling_span_ms"] / 1000
    print(
        json.dumps(
            {
                "records": records,
                "messages": processor.outputs.messages,
                "span_s": seconds,
                "records_per_s": records / seconds if seconds > 0 else 0.0,
                "cpu_us_per_record": span["handling_cpu_ms"] * 1000 / records,
                "thread_cpu_us_per_record": span["handling_thread_cpu_ms"] * 1000 / records,
                "handle_cpu_us_per_record": span["handle_cpu_ms"] * 1000 / records,
                "quixstreams": quixstreams.__version__,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
