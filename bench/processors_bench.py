"""Processor throughput: records/s per worker, faust worker vs the same aggregation in Quix.

Fills one topic (one partition) with enriched TCP records in batches (JSON arrays, as the
enricher's high-rate path sends them), then, in the same run and on the same topic:

  1. the pure aggregation alone (no Kafka): the ceiling;
  2. ``python -m processors worker`` (faust-streaming), one process: records / the time from
     its first to its last message (its own ``handling_span_ms`` counter);
  3. ``bench/processors_quix.py`` under Quix Streams, one process, the same ConnectionProcessor.

Records are dated in windows that start a minute from now, so no window closes during the
run: what is measured is consumption and aggregation, not publishing.

    python -m bench.processors_bench [--records 200000] [--batch 500] [--repeat 3]
        [--quix-python .state/quix-venv/bin/python]

Each run reports records/s (records / first-to-last-message span, the same span for both) and
CPU per record over that span (the whole process, client threads included, and the handling
thread alone): on a shared machine CPU per record is the steadier figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowscope.codec import JsonCodec
from flowscope.kafka import RecordProducer, TopicSpec, ensure_topics, wait_for_broker
from flowscope.records import Endpoint, EnrichedTcpConnection, Role
from flowscope.topics import Topics
from processors.core.stage import Source
from processors.cost.prices import load_price_table
from processors.tcp.processor import ConnectionProcessor

REPO = Path(__file__).resolve().parents[1]
S = 1_000_000_000


def workloads(n: int) -> list[Endpoint]:
    return [
        Endpoint(
            address=f"10.1.{i}.7",
            port=8080,
            attribution="pod",
            namespace=f"ns{i % 4}",
            workload_kind="Deployment",
            workload_name=f"svc{i}",
            deployment=f"svc{i}",
            zone=f"z-{'abc'[i % 3]}",
            region="r1",
            node=f"node{i % 5}",
            pod_name=f"svc{i}-5d9c7-x{i}",
            service=f"svc{i}",
        )
        for i in range(n)
    ]


def make_records(n: int, base_ns: int, seed: int = 1) -> list[EnrichedTcpConnection]:
    rng = random.Random(seed)
    pods = workloads(30)
    out = []
    for _ in range(n):
        client, server = rng.sample(pods, 2)
        end = base_ns + rng.randrange(0, 20 * S)
        role: Role = rng.choice(("client", "client", "server"))
        out.append(
            EnrichedTcpConnection(
                start_time_ns=end - 3_000_000,
                end_time_ns=end,
                observer_node="node1",
                observer_role=role,
                client_observed=True,
                network_type="ipv4",
                client=client,
                server=server,
                bytes_client_to_server=rng.randrange(100, 10**6),
                bytes_server_to_client=rng.randrange(100, 10**7),
                connect_latency_us=rng.randrange(50, 5000) if role == "client" else None,
                srtt_us=rng.randrange(20, 3000),
                retrans_segs=rng.randrange(0, 3),
                peer_class="same_zone" if client.zone == server.zone else "cross_zone",
                outcome=rng.choice(("closed",) * 20 + ("refused", "reset_by_peer")),
                segs_out=rng.randrange(3, 50),
            )
        )
    return out


def pure_rate(batches: list[bytes], records: int) -> float:
    processor = ConnectionProcessor(
        10 * S, 5 * S, 3600 * S, load_price_table(REPO / "config" / "prices.yaml")
    )
    started = time.perf_counter()
    for i, value in enumerate(batches):
        processor.handle(value, Source("bench", 0, i, None), time.time_ns())
    return records / (time.perf_counter() - started)


def faust_rate(bootstrap: str, topics: Topics, records: int, workdir: Path) -> dict[str, float]:
    err = workdir / "faust.stderr"
    argv = [
        sys.executable,
        "-m",
        "processors",
        "worker",
        "--bootstrap-servers",
        bootstrap,
        "--topic-prefix",
        topics.prefix,
        "--group",
        f"bench-{uuid.uuid4().hex[:8]}",
        "--state-dir",
        str(workdir / "state"),
        "--window-seconds",
        "10",
        "--grace-seconds",
        "5",
        "--idle-allowance-seconds",
        "3600",
        "--log-interval-seconds",
        "0.5",
        "--log-level",
        "WARNING",
    ]
    # WARNING hides the counters line: log it at INFO from the processors logger only.
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLOWSCOPE_LOG_LEVEL": "INFO"}
    argv[-1] = "INFO"
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            lines = re.findall(r"tcp counters (.*)", err.read_text(errors="replace"))
            if lines:
                counters = dict(kv.split("=", 1) for kv in lines[-1].split())
                if int(counters["records"]) >= records:
                    span_s = int(counters["handling_span_ms"]) / 1000
                    n = int(counters["records"])
                    return {
                        "records": n,
                        "messages": int(counters["messages"]),
                        "span_s": span_s,
                        "records_per_s": n / span_s,
                        "cpu_us_per_record": int(counters["handling_cpu_ms"]) * 1000 / n,
                        "thread_cpu_us_per_record": (
                            int(counters["handling_thread_cpu_ms"]) * 1000 / n
                        ),
                        "handle_cpu_us_per_record": int(counters["handle_cpu_ms"]) * 1000 / n,
                    }
            if proc.poll() is not None:
                raise RuntimeError(f"faust worker exited:\n{err.read_text()[-3000:]}")
            time.sleep(0.25)
        raise RuntimeError(f"faust worker did not finish:\n{err.read_text()[-3000:]}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def quix_rate(quix_python: str, bootstrap: str, topic: str, records: int) -> dict[str, object]:
    out = subprocess.run(
        [quix_python, str(REPO / "bench" / "processors_quix.py"), bootstrap, topic, str(records)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"quix run failed ({out.returncode}):\n{out.stderr[-3000:]}")
    result: dict[str, object] = json.loads(lines[-1])
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--bootstrap", default=os.environ.get("FLOWSCOPE_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=500, help="records per Kafka message")
    p.add_argument("--repeat", type=int, default=3, help="side-by-side runs (best reported)")
    p.add_argument("--quix-python", default=str(REPO / ".state" / "quix-venv" / "bin" / "python"))
    args = p.parse_args()
    if not Path(args.quix_python).exists():
        print(
            f"no Quix interpreter at {args.quix_python}: python3 -m venv .state/quix-venv && "
            ".state/quix-venv/bin/pip install quixstreams==3.28.1 msgspec==0.22.0 PyYAML",
            file=sys.stderr,
        )
        return 2
    wait_for_broker(args.bootstrap)
    runs = []
    for run in range(1, args.repeat + 1):
        print(f"run {run} of {args.repeat}")
        # Alternate which side goes first: on a shared machine load drifts within a run.
        runs.append(one_run(args, quix_first=run % 2 == 0))
    if args.repeat > 1:
        faust, quix = max(r["faust"] for r in runs), max(r["quix"] for r in runs)
        ratios = sorted(r["ratio"] for r in runs)
        cpu = sorted(r["cpu_ratio"] for r in runs)
        print(
            f"best of {args.repeat}: faust {faust:,.0f} records/s, Quix {quix:,.0f} records/s, "
            f"ratio of the bests {faust / quix:.2f}; per-run ratios {ratios[0]:.2f}.."
            f"{ratios[-1]:.2f} (median {ratios[len(ratios) // 2]:.2f}), records per CPU "
            f"second {cpu[0]:.2f}..{cpu[-1]:.2f} (median {cpu[len(cpu) // 2]:.2f})"
        )
    return 0


def show(label: str, r: Mapping[str, Any]) -> None:
    print(
        f"{label} {r['records_per_s']:>10,.0f} records/s ({r['messages']:.0f} messages in "
        f"{r['span_s']:.2f} s; CPU per record {r['cpu_us_per_record']:.2f} us process, "
        f"{r['thread_cpu_us_per_record']:.2f} us handling thread, of which "
        f"{r['handle_cpu_us_per_record']:.2f} us in the processor)"
    )


def one_run(args: argparse.Namespace, quix_first: bool) -> dict[str, float]:
    """One side-by-side run on a fresh topic: the pure ceiling, then faust and Quix."""
    topics = Topics(f"bench-{uuid.uuid4().hex[:8]}")
    ensure_topics(args.bootstrap, [TopicSpec(topics.enriched_tcp, partitions=1)])
    records = make_records(args.records, time.time_ns() + 60 * S)
    codec = JsonCodec(EnrichedTcpConnection)
    batches = [
        codec.encode_batch(records[i : i + args.batch]) for i in range(0, len(records), args.batch)
    ]
    producer = RecordProducer(
        args.bootstrap,
        {"linger.ms": 20, "compression.type": "lz4", "message.max.bytes": 10_000_000},
    )
    for value in batches:
        assert producer.produce(topics.enriched_tcp, value, key=b"bench")
    assert producer.flush(60) == 0
    print(
        f"topic {topics.enriched_tcp}: {len(records):,} records in {len(batches):,} messages "
        f"of {args.batch} ({sum(map(len, batches)) // len(records)} B/record)"
    )
    print(f"pure aggregation (no Kafka):  {pure_rate(batches, len(records)):>10,.0f} records/s")

    def run_faust() -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix="bench-processors-") as tmp:
            faust = faust_rate(args.bootstrap, topics, len(records), Path(tmp))
        show("faust worker (1 process):    ", faust)
        return faust

    def run_quix() -> dict[str, object]:
        quix = quix_rate(args.quix_python, args.bootstrap, topics.enriched_tcp, len(records))
        show(f"Quix Streams {quix['quixstreams']} (1 process):", quix)
        return quix

    if quix_first:
        quix = run_quix()
        faust = run_faust()
    else:
        faust = run_faust()
        quix = run_quix()
    ratio = float(faust["records_per_s"]) / float(quix["records_per_s"])  # type: ignore[arg-type]
    cpu_ratio = float(quix["cpu_us_per_record"]) / faust["cpu_us_per_record"]  # type: ignore[arg-type]
    print(f"faust / quix ratio: {ratio:.2f} records/s, {cpu_ratio:.2f} records per CPU second")
    return {
        "faust": faust["records_per_s"],
        "quix": float(quix["records_per_s"]),  # type: ignore[arg-type]
        "ratio": ratio,
        "cpu_ratio": cpu_ratio,
    }


if __name__ == "__main__":
    sys.exit(main())
