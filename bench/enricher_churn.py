"""The join's hot path while the cluster's metadata changes, without Kafka.

    .venv/bin/python bench/enricher_churn.py [--every 10,100] [--rounds 3] [--records 200000]

The enricher keeps each pod's, node's and Service's end encoded until its metadata changes
(enricher/join/index.py says what a change drops). This measures what changes cost the records
around them: the bench's large cluster (10,000 pods, 1,000 nodes, 2,000 services) and its
record mix (bench/enricher_workload.py), 256 records per message through the real joiner's
per-message work (Joiner.handle, then its outbox flushed to a no-op producer), with one
metadata change every ``--every`` messages (a new Service or a node update, applied as the
joiner's run loop applies the metadata topic's records, held records retried after), and
without changes, in alternating rounds in one process. Prints µs of CPU per record and
records/s per core (this thread's CPU), each round and the median per setting.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from confluent_kafka import Message

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.enricher_workload import cluster, raw_records  # noqa: E402
from enricher.join.joiner import Joiner  # noqa: E402
from enricher.join.state import MetadataState  # noqa: E402
from enricher.settings import Settings  # noqa: E402
from flowscope.kafka import RecordProducer  # noqa: E402
from flowscope.records.metadata import NodeMeta, ServiceMeta  # noqa: E402

PODS, NODES, SERVICES, BATCH = 10_000, 1_000, 2_000, 256


class Sink:
    """Stands in for the joiner's producer: the bench measures the join, not the broker."""

    def produce(self, topic: str, value: bytes, key: object = None, records: int = 1) -> bool:
        return True


def joiner() -> Joiner:
    """The real joiner, fed messages by hand: decode, render, count, hold, route into its
    outbox (Joiner.handle), then flush to the sink, as process_batch does after each batch."""
    j = Joiner(Settings())
    j._producer = cast(RecordProducer, Sink())
    return j


def message(j: Joiner, value: bytes, offset: int) -> None:
    j.handle(Message(topic="raw", partition=0, offset=offset, value=value), ("raw", 0), offset)
    j._outbox.flush()


def changes(state: MetadataState, now_ns: int) -> Callable[[int], None]:
    """The n-th change: odd ones add a Service, even ones move a node to another zone."""

    def change(n: int) -> None:
        if n % 2:
            ip = f"10.97.{n // 256 % 256}.{n % 256}"
            state.upsert(ServiceMeta(name=f"new-{n}", namespace="ns-1", cluster_ips=[ip]), now_ns)
        else:
            m = n % NODES
            zone = ("eu-west-1a", "eu-west-1b")[n // 2 % 2]
            address = f"172.20.{m // 256}.{m % 256}"
            node = NodeMeta(name=f"node-{m}", zone=zone, region="eu-west-1", addresses=[address])
            state.upsert(node, now_ns)

    return change


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--records", type=int, default=200_000, help="records per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--every", default="10,100", help="messages between metadata changes, comma-separated"
    )
    args = p.parse_args()
    intervals = [0] + [int(x) for x in args.every.split(",") if x.strip()]

    now = time.time_ns()
    j = joiner()
    state = j.state
    for meta in cluster(PODS, NODES, SERVICES, now):
        state.upsert(meta, now)
    state.track_changes()
    gc.freeze()  # as the joiner does after its load
    change = changes(state, now)

    def messages(n: int, seed: int) -> list[bytes]:
        recs = raw_records(n, PODS, NODES, SERVICES, now, seed=seed)
        return [b"[" + b",".join(recs[i : i + BATCH]) + b"]" for i in range(0, n, BATCH)]

    for offset, value in enumerate(messages(100_000, seed=41)):  # every end encoded once
        message(j, value, offset)
    measured = messages(args.records, seed=42)
    records = len(measured) * BATCH
    print(
        f"{PODS} pods, {NODES} nodes, {SERVICES} services; {records} records per round in "
        f"{len(measured)} messages of {BATCH}; C loop: {j.renderer.native}"
    )
    results: dict[int, list[float]] = {every: [] for every in intervals}
    n_change = 0
    for rnd in range(1, args.rounds + 1):
        line = [f"round {rnd}:"]
        for every in intervals:
            t0 = time.thread_time_ns()
            for i, value in enumerate(measured):
                if every and i % every == 0:
                    n_change += 1
                    change(n_change)
                    j.retry_held()
                message(j, value, i)
            us = (time.thread_time_ns() - t0) / records / 1e3
            results[every].append(us)
            label = "no changes" if not every else f"a change every {every} messages"
            line.append(f"{label} {us:.2f} µs/rec")
        print("  ".join(line), flush=True)
    print(f"\nover {args.rounds} rounds (median µs CPU per record, records/s per core):")
    for every, values in results.items():
        us = statistics.median(values)
        label = "no changes" if not every else f"a change every {every} messages"
        extra = f" ({every * BATCH:,} records)" if every else ""
        print(f"  {label + extra:<45} {us:6.2f} µs  {1e6 / us:>9,.0f}/s")
    print(f"metadata changes applied: {n_change}; services now {len(state.services)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
