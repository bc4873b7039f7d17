"""Enricher throughput and added delay, against the real broker, beside a pass-through ceiling.

    .venv/bin/python bench/enricher_bench.py [--records 200000] [--warmup 100000]
        [--rounds 5] [--input-batch 256] [--output-batch 256] [--bootstrap 127.0.0.1:9092]

A large cluster's metadata (10,000 pods, 1,000 nodes, 2,000 services by default) is published
to a fresh metadata topic, and ``--records`` raw records to a fresh raw topic, ``--input-batch``
records per message (a JSON array, as collectors send them; 1: one record per message). Two
stages then run, each in its own process so its CPU time and peak RSS are its own:

- ``passthrough``: consumer -> producer of the same messages, with the same client settings
  and batch size as the enricher: the ceiling for a Python stage on this broker;
- ``enricher``: the real :class:`enricher.join.joiner.Joiner`, producing ``--output-batch``
  enriched records per message.

Phase 1 (throughput): each stage drains the backlog; records/s, CPU seconds per record (all
threads of the process, librdkafka's included) and records/s per core are reported. It runs
``--rounds`` times, the stages alternating, each time in fresh processes with fresh consumer
groups over the same records; each round is printed, then the median and range per stage
(the detailed table is the last round's). The
backlog starts with ``--warmup`` records (other connections between the same pods: other
ports, other internet peers), timed apart and reported on their own line: the enricher
renders each pod's, node's and Service's end once, at its first record, and keeps it until
its metadata changes, so a short run from a cold start mostly measures that. The table is
the steady state that follows, where new internet peers still arrive cold.
Phase 2 (delay): with each stage running live, records are produced at a fixed rate with
``start_time_ns`` = the time they were sent; a consumer of the stage's output takes
receive time - send time. The delay the enricher adds is its p50/p99 minus the pass-through's
at the same rate (both include the same producer lingering and broker round trips). Phase 2
sends one record per message, so it also exercises the single-record input path; the
enricher still batches what one consume() call brings per output partition.

Stages are run one after the other: this machine has 2 cores shared with the broker. CPU
time per record moves by 20% and more with what else runs on the machine (hyper-threads and
caches are shared): compare the two stages of one run, and repeat runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import Message, TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.enricher_workload import cluster, raw_records  # noqa: E402
from enricher.join.joiner import Joiner  # noqa: E402
from enricher.publish.kubeobjects import ParsedObjects  # noqa: E402
from enricher.publish.publisher import MetadataPublisher  # noqa: E402
from enricher.settings import Settings  # noqa: E402
from flowscope.kafka import (  # noqa: E402
    RecordConsumer,
    RecordProducer,
    TopicSpec,
    ensure_topics,
    wait_for_broker,
)
from flowscope.records import RawTcpConnection  # noqa: E402
from flowscope.settings import parse_bool as flag  # noqa: E402
from flowscope.topics import Topics  # noqa: E402

# -- the stages (each run in a process of its own) ---------------------------------------------


def _rusage() -> tuple[float, int]:
    """CPU seconds of every thread of this process, and its peak RSS in KiB.

    The peak comes from VmHWM: getrusage's ru_maxrss survives exec, so a child of a big
    parent would report the parent's peak."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    hwm = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return ru.ru_utime + ru.ru_stime, hwm


def _thread_cpu() -> dict[str, float]:
    """CPU seconds per kind of thread: librdkafka's own ("rdk:...") and the rest (Python)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"python": 0.0, "librdkafka": 0.0}
    for task in Path("/proc/self/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        cpu = (int(fields[11]) + int(fields[12])) / tick
        out["librdkafka" if comm.startswith("rdk:") else "python"] += cpu
    return out


class Passthrough:
    """consume -> produce the same bytes: what any Python stage pays before doing any work."""

    def __init__(
        self, bootstrap: str, topics: Topics, group: str, out_topic: str, poll_timeout_s: float
    ) -> None:
        self.poll_timeout_s = poll_timeout_s
        self.consumer = RecordConsumer(bootstrap, group)
        self.consumer.subscribe([topics.raw_tcp])
        self.producer = RecordProducer(bootstrap)
        self.out_topic = out_topic
        self.messages_in = 0

    def run(self, stop: threading.Event, batch_size: int = 2000) -> None:
        while not stop.is_set():
            batch = self.consumer.consume(batch_size, self.poll_timeout_s)
            if not batch:
                continue
            last: dict[tuple[str, int], int] = {}
            for msg in batch:
                self.producer.produce(self.out_topic, msg.value(), key=msg.key())
                self.messages_in += 1
                last[(msg.topic() or "", msg.partition() or 0)] = msg.offset() or 0
            self.consumer.store_offsets([TopicPartition(t, p, o + 1) for (t, p), o in last.items()])
        self.producer.flush(30)
        self.consumer.close()


def run_stage(args: argparse.Namespace) -> int:
    topics = Topics(args.prefix)
    stop = threading.Event()
    group = f"bench-{args.stage}-{uuid.uuid4().hex[:6]}"
    cpu0, _ = _rusage()
    wall0 = time.perf_counter()
    result: dict[str, Any] = {"stage": args.stage}
    if args.stage == "enricher":
        joiner = Joiner(
            Settings(
                bootstrap_servers=args.bootstrap,
                topic_prefix=args.prefix,
                consumer_group=group,
                output_batch_records=args.output_batch,
                exactly_once=args.exactly_once,
            )
        )
        joiner.start()  # reads the whole metadata topic
        cpu1, rss1 = _rusage()
        result.update(
            metadata_load_s=time.perf_counter() - wall0,
            metadata_load_cpu_s=cpu1 - cpu0,
            metadata_pods=len(joiner.state.pods),
            rss_after_metadata_kib=rss1,
        )
        target: Any = joiner
        runner = threading.Thread(target=joiner.run, args=(stop,), daemon=True)

        def done() -> int:
            # Records through the join (queued for the producer, held or dead-lettered):
            # records_in counts them when their message is decoded, before any work on them.
            c = joiner.counters
            return joiner._outbox.records + c.deadlettered + len(joiner.holdback) - args.warmup
    else:
        target = Passthrough(
            args.bootstrap, topics, group, args.out_topic, Settings().poll_timeout_s
        )
        runner = threading.Thread(target=target.run, args=(stop,), daemon=True)

        def done() -> int:
            # The pass-through does not decode: all records are through with the last message;
            # the warm-up's messages are all whole.
            if target.messages_in < args.warm_messages:
                return -1
            return args.records if target.messages_in >= args.warm_messages + args.messages else 0

    warm_messages_out = 0
    if args.profile and args.stage == "enricher":
        import cProfile

        prof = cProfile.Profile()
        wall_start, (cpu_start, _) = time.perf_counter(), _rusage()
        prof.enable()
        # Run the loop in this thread so the profile sees it.
        threading.Thread(target=_stop_when, args=(stop, done, args.records), daemon=True).start()
        joiner.run(stop)
        prof.disable()
        prof.dump_stats(args.profile)
        stop.set()
    else:
        wall_start, (cpu_start, _) = time.perf_counter(), _rusage()
        threads_start = _thread_cpu()
        runner.start()
        if args.warmup:
            while done() < 0:
                time.sleep(0.01)
            wall_warm, (cpu_warm, _) = time.perf_counter(), _rusage()
            result["warmup"] = {
                "records": args.warmup,
                "wall_s": wall_warm - wall_start,
                "cpu_s": cpu_warm - cpu_start,
            }
            wall_start, cpu_start, threads_start = wall_warm, cpu_warm, _thread_cpu()
            if args.stage == "enricher":
                warm_messages_out = joiner._outbox.messages
        while done() < args.records:
            time.sleep(0.01)
    producer: RecordProducer = target._producer if args.stage == "enricher" else target.producer
    if producer is not None:
        producer.flush(60)
    wall = time.perf_counter() - wall_start
    cpu, rss = _rusage()
    if not args.profile:
        threads = _thread_cpu()
        result["thread_cpu_s"] = {k: threads[k] - threads_start.get(k, 0.0) for k in threads}
    result.update(
        records=done(),
        wall_s=wall,
        cpu_s=cpu - cpu_start,
        peak_rss_kib=rss,
    )
    if args.stage == "enricher":
        result["messages_out"] = joiner._outbox.messages - warm_messages_out
        result["records"] = joiner.counters.records_in - args.warmup
    else:
        result["messages_out"] = target.messages_in - args.warm_messages
    result["messages_in"] = args.messages
    if args.stage == "enricher":
        result["counters"] = {
            k: v for k, v in joiner.metrics().items() if not k.startswith("enricher_metadata_")
        }
    print(json.dumps(result), flush=True)
    if args.profile or args.no_live:
        stop.set()
        runner.join(60)
        return 0
    # Phase 2: stay live until the parent closes stdin.
    print("LIVE", flush=True)
    sys.stdin.read()
    stop.set()
    runner.join(60)
    return 0


def _stop_when(stop: threading.Event, done: Any, n: int) -> None:
    while done() < n:
        time.sleep(0.01)
    stop.set()


# -- the parent: set-up, phases, report ---------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def measure_delay(
    bootstrap: str,
    raw_topic: str,
    out_topics: list[str],
    template: bytes,
    rate: int,
    seconds: float,
) -> dict[str, list[float]]:
    """Send ``rate`` records/s for ``seconds`` with start_time_ns = send time; return, per
    output topic, the delays (ms) until each came out there."""
    consumer = RecordConsumer(
        bootstrap,
        f"bench-delay-{uuid.uuid4().hex[:6]}",
        defaults={
            "auto.offset.reset": "latest",
            "fetch.wait.max.ms": 5,
            # What a consumer of enriched.* sees: transactions, once committed.
            "isolation.level": "read_committed",
        },
    )
    consumer.subscribe(out_topics)
    # Wait for the assignment so no record is missed with offset reset "latest".
    deadline = time.monotonic() + 30
    while len(consumer.assignment()) < len(out_topics) and time.monotonic() < deadline:
        consumer.consume(1, 0.1)
    consumer.consume(1, 0.5)
    producer = RecordProducer(bootstrap, {"linger.ms": 1})
    raw = msgspec.json.decode(template, type=RawTcpConnection)
    enc = msgspec.json.Encoder()
    dec = msgspec.json.Decoder()
    delays: dict[str, list[float]] = {t: [] for t in out_topics}
    n = int(rate * seconds)
    sent = 0
    t0 = time.perf_counter()

    def drain(timeout: float) -> None:
        msgs: list[Message] = consumer.consume(1000, timeout)
        now = time.time_ns()
        for msg in msgs:
            value = msg.value()
            if not isinstance(value, bytes):
                continue
            decoded = dec.decode(value)
            for obj in decoded if isinstance(decoded, list) else [decoded]:
                start = obj.get("start_time_ns", obj.get("start_time_unix_nano"))
                delays[msg.topic() or ""].append((now - int(start)) / 1e6)

    while sent < n:
        due = int((time.perf_counter() - t0) * rate)
        while sent < min(due, n):
            value = enc.encode(msgspec.structs.replace(raw, start_time_ns=time.time_ns()))
            producer.produce(raw_topic, value)
            sent += 1
        producer.poll(0)
        drain(0.001)
    producer.flush(10)
    deadline = time.monotonic() + 15
    while min(len(d) for d in delays.values()) < n and time.monotonic() < deadline:
        # A short wait, as in the loop above: consume() waits its whole timeout unless 1,000
        # messages come, and the receive time is taken when it returns (a 0.1 s wait here
        # added up to 100 ms to the last records' delay, and made most of the p99).
        drain(0.001)
    consumer.close()
    return delays


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--bootstrap", default=os.environ.get("FLOWSCOPE_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    p.add_argument("--records", type=int, default=200_000, help="records measured")
    p.add_argument(
        "--warmup",
        type=int,
        default=100_000,
        help="records each stage handles first, timed apart (0: measure from a cold start)",
    )
    p.add_argument(
        "--input-batch", type=int, default=256, help="raw records per message (1: no arrays)"
    )
    p.add_argument(
        "--output-batch",
        type=int,
        default=256,
        help="enriched records per message (FLOWSCOPE_ENRICHER_BATCH_RECORDS)",
    )
    p.add_argument("--pods", type=int, default=10_000)
    p.add_argument("--nodes", type=int, default=1_000)
    p.add_argument("--services", type=int, default=2_000)
    p.add_argument("--delay-rate", type=int, default=2_000, help="records/s in the delay phase")
    p.add_argument("--delay-seconds", type=float, default=5.0)
    p.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="phase-1 rounds, the stages alternating (a fresh process per stage and round)",
    )
    p.add_argument("--only", choices=["passthrough", "enricher"], help="run one stage only")
    p.add_argument(
        "--exactly-once",
        type=flag,
        default=True,
        help="the enricher's transactional output (false: at-least-once, as before it)",
    )
    p.add_argument("--profile", help="enricher stage only: write a cProfile dump here")
    # Internal: run one stage in this process.
    p.add_argument("--stage", choices=["passthrough", "enricher"], help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    p.add_argument("--out-topic", help=argparse.SUPPRESS)
    p.add_argument("--messages", type=int, help=argparse.SUPPRESS)
    p.add_argument("--warm-messages", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--no-live", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:
        return run_stage(args)

    wait_for_broker(args.bootstrap)
    now = time.time_ns()
    topics = Topics(prefix=f"bench-{uuid.uuid4().hex[:8]}")
    passthrough_topic = f"{topics.prefix}.passthrough"
    ensure_topics(
        args.bootstrap,
        [
            TopicSpec(topics.metadata, compacted=True),
            TopicSpec(topics.raw_tcp),
            TopicSpec(topics.enriched_tcp),
            TopicSpec(topics.deadletter),
            TopicSpec(passthrough_topic),
        ],
    )
    t = time.perf_counter()
    metas = cluster(args.pods, args.nodes, args.services, now)
    MetadataPublisher(args.bootstrap, topics).publish(ParsedObjects(metas=metas), prune=False)
    print(
        f"metadata: {args.pods} pods, {args.nodes} nodes, {args.services} services published "
        f"in {time.perf_counter() - t:.1f}s to {topics.metadata}"
    )
    t = time.perf_counter()
    step = max(1, args.input_batch)
    warmup = -(-args.warmup // step) * step  # whole messages, so stages can count them
    # The warm-up's connections differ from the measured ones (another seed: other ports, other
    # internet peers); the cluster is the same.
    warm_records = raw_records(warmup, args.pods, args.nodes, args.services, now, seed=41)
    records = raw_records(args.records, args.pods, args.nodes, args.services, now)
    producer = RecordProducer(args.bootstrap)

    def in_messages(recs: list[bytes]) -> list[bytes]:
        if step == 1:
            return recs
        return [b"[" + b",".join(recs[i : i + step]) + b"]" for i in range(0, len(recs), step)]

    warm_messages, messages = in_messages(warm_records), in_messages(records)
    for value in warm_messages + messages:
        producer.produce(topics.raw_tcp, value)
    producer.flush(120)
    size = sum(map(len, records)) / len(records)
    print(
        f"raw: {warmup} warm-up + {len(records)} measured records ({size:.0f} B each) in "
        f"{len(warm_messages)} + {len(messages)} messages ({step} records each) produced in "
        f"{time.perf_counter() - t:.1f}s to {topics.raw_tcp}"
    )

    # Phase 1, one stage at a time, in alternating rounds (this machine's speed drifts by 2x
    # within minutes: a ratio is only fair between neighbouring runs). The last round's stages
    # stay up (idle) for phase 2.
    rounds: list[dict[str, dict[str, Any]]] = []
    procs: dict[str, subprocess.Popen[str]] = {}
    out_topics = {"passthrough": passthrough_topic, "enricher": topics.enriched_tcp}
    stages = [s for s in ("passthrough", "enricher") if not args.only or s == args.only]
    n_rounds = 1 if args.profile else max(1, args.rounds)
    # Each stage process's command line; the rounds before the last add --no-live.
    stage_base = {
        stage: [
            sys.executable,
            __file__,
            "--stage",
            stage,
            "--bootstrap",
            args.bootstrap,
            "--prefix",
            topics.prefix,
            "--out-topic",
            passthrough_topic,
            "--records",
            str(args.records),
            "--messages",
            str(len(messages)),
            "--warmup",
            str(warmup),
            "--warm-messages",
            str(len(warm_messages)),
            "--output-batch",
            str(args.output_batch),
            "--exactly-once",
            str(args.exactly_once).lower(),
        ]
        + (["--profile", args.profile] if args.profile and stage == "enricher" else [])
        for stage in stages
    }
    try:
        for rnd in range(n_rounds):
            last = rnd == n_rounds - 1
            rounds.append({})
            for stage in stages:
                cmd = stage_base[stage] + ([] if last else ["--no-live"])
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
                if last:
                    procs[stage] = proc
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if not line:
                    proc.wait()
                    print(f"{stage} stage failed (exit {proc.returncode})", file=sys.stderr)
                    return 1
                rounds[-1][stage] = json.loads(line)
                if not last:
                    proc.wait(120)
                elif not args.profile:
                    assert proc.stdout.readline().strip() == "LIVE"
            print(_round_line(rnd + 1, rounds[-1]), flush=True)
        results = rounds[-1]
        # Phase 2: both stages live at once, fed the same paced records.
        if not args.profile:
            delays = measure_delay(
                args.bootstrap,
                topics.raw_tcp,
                [out_topics[s] for s in results],
                records[0],
                args.delay_rate,
                args.delay_seconds,
            )
            for stage in results:
                d = delays[out_topics[stage]]
                results[stage]["delay_ms"] = {
                    "n": len(d),
                    "p50": _percentile(d, 0.50),
                    "p99": _percentile(d, 0.99),
                    "max": max(d, default=float("nan")),
                }
    finally:
        for proc in procs.values():
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(120)
    report(results, args)
    report_rounds(rounds)
    return 0


def _per_core(r: dict[str, Any]) -> float:
    return float(r["records"] / r["cpu_s"])


def _round_line(n: int, stages: dict[str, dict[str, Any]]) -> str:
    parts = [f"round {n}:"]
    parts += [f"{s} {_per_core(r):,.0f} rec/s/core" for s, r in stages.items()]
    if len(stages) == 2:
        ratio = _per_core(stages["enricher"]) / _per_core(stages["passthrough"])
        parts.append(f"ratio {ratio:.2f}")
    return "  ".join(parts)


def report_rounds(rounds: list[dict[str, dict[str, Any]]]) -> None:
    """Each stage's records/s per core over the rounds: median and range (the table above
    is the last round's)."""
    if len(rounds) < 2:
        return
    print(f"\nover {len(rounds)} rounds (records/s per core, all threads):")
    for stage in rounds[0]:
        rates = sorted(_per_core(r[stage]) for r in rounds)
        print(
            f"  {stage:<12} median {statistics.median(rates):,.0f}  min {rates[0]:,.0f}  "
            f"max {rates[-1]:,.0f}"
        )
    if all(len(r) == 2 for r in rounds):
        ratios = sorted(_per_core(r["enricher"]) / _per_core(r["passthrough"]) for r in rounds)
        print(f"  enricher / pass-through per round: {ratios[0]:.2f}-{ratios[-1]:.2f}")


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print()
    print(
        f"{'stage':<12} {'records':>8} {'wall s':>7} {'rec/s':>9} {'CPU s':>7} "
        f"{'µs CPU/rec':>10} {'rec/s/core':>10} {'peak RSS':>9} {'p50 ms':>7} {'p99 ms':>7}"
    )
    for stage, r in results.items():
        rate = r["records"] / r["wall_s"]
        per_core = r["records"] / r["cpu_s"]
        d = r.get("delay_ms", {})
        print(
            f"{stage:<12} {r['records']:>8} {r['wall_s']:>7.2f} {rate:>9.0f} {r['cpu_s']:>7.2f} "
            f"{r['cpu_s'] / r['records'] * 1e6:>10.2f} {per_core:>10.0f} "
            f"{r['peak_rss_kib'] / 1024:>7.0f}Mi {d.get('p50', float('nan')):>7.1f} "
            f"{d.get('p99', float('nan')):>7.1f}"
        )
        if d and d["n"] < args.delay_rate * args.delay_seconds:
            print(f"  ({stage}: only {d['n']} of the paced records came out within 15 s)")
    for stage, r in results.items():
        w = r.get("warmup")
        if w:
            print(
                f"{stage} warm-up (from a cold start, not in the table): {w['records']} records, "
                f"{w['cpu_s'] / w['records'] * 1e6:.2f} µs CPU/rec, "
                f"{w['records'] / w['cpu_s']:.0f} rec/s/core"
            )
    for stage, r in results.items():
        m_in, m_out = r["messages_in"], r["messages_out"]
        print(
            f"{stage}: {m_in} messages in ({r['records'] / m_in:.0f} records each), {m_out} out "
            f"({r['records'] / max(1, m_out):.0f} each); {r['cpu_s'] / m_in * 1e6:.0f} µs CPU "
            f"and {m_in / r['cpu_s']:.0f} messages/s per core, per message in"
        )
    for stage, r in results.items():
        if "thread_cpu_s" in r:
            per = {k: v / r["records"] * 1e6 for k, v in r["thread_cpu_s"].items()}
            print(
                f"{stage}: µs CPU per record in Python threads {per['python']:.2f}, "
                f"in librdkafka threads {per['librdkafka']:.2f}"
            )
    if "enricher" in results:
        e = results["enricher"]
        print(
            f"\nenricher metadata load: {e['metadata_pods']} pods in {e['metadata_load_s']:.2f}s "
            f"({e['metadata_load_cpu_s']:.2f} CPU s), RSS after load "
            f"{e['rss_after_metadata_kib'] / 1024:.0f} MiB"
        )
        print("enricher counters: " + " ".join(f"{k}={v}" for k, v in e["counters"].items()))
    if len(results) == 2:
        e, pt = results["enricher"], results["passthrough"]
        ratio = (e["records"] / e["cpu_s"]) / (pt["records"] / pt["cpu_s"])
        print(f"enricher / pass-through, records per CPU second: {ratio:.2f}")
        if "delay_ms" in e and "delay_ms" in pt:
            print(
                f"delay added by the enricher at {args.delay_rate} rec/s: "
                f"p50 {e['delay_ms']['p50'] - pt['delay_ms']['p50']:+.1f} ms, "
                f"p99 {e['delay_ms']['p99'] - pt['delay_ms']['p99']:+.1f} ms"
            )


if __name__ == "__main__":
    sys.exit(main())
