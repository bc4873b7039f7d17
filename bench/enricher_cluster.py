"""Enricher throughput on a three-broker cluster (replication factor 3, min.insync.replicas 2,
acks=all, transactions) beside a single broker, in the same run.

    .venv/bin/python bench/enricher_cluster.py [--rounds 2] [--records 100000]
        [--warmup 50000] [--output-batches 256,1]

Starts its own single broker and its own three-broker cluster (devbroker, free ports, a
temporary state dir; both stopped at the end), then runs bench/enricher_bench.py's enricher
stage (``--only enricher``) against each, alternating the targets round by round (this
machine's speed drifts within minutes: a ratio is only fair between neighbouring runs), for
each ``--output-batches`` value (enriched records per message; 1: one record per message).
Prints records/s (wall) and records/s per core per target and batch, the medians, and the
cluster / single ratio; the load average is printed beside them: on a loaded machine the
figures are noisy, the ratios less so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devbroker import Broker, Cluster  # noqa: E402
from devbroker.ports import free_port_block  # noqa: E402


def run_enricher_bench(bootstrap: str, args: argparse.Namespace, batch: int) -> tuple[float, float]:
    """One enricher stage run: (records/s wall, records/s per core), from its table row."""
    cmd = [
        sys.executable,
        str(REPO / "bench" / "enricher_bench.py"),
        "--bootstrap",
        bootstrap,
        "--only",
        "enricher",
        "--rounds",
        "1",
        "--records",
        str(args.records),
        "--warmup",
        str(args.warmup),
        "--output-batch",
        str(batch),
        "--delay-seconds",
        "1",
        "--pods",
        str(args.pods),
        "--nodes",
        str(args.nodes),
        "--services",
        str(args.services),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"enricher_bench failed on {bootstrap}:\n{done.stdout}{done.stderr}")
    for line in done.stdout.splitlines():
        fields = line.split()
        if fields[:1] == ["enricher"] and len(fields) >= 7 and fields[1].isdigit():
            return float(fields[3]), float(fields[6])
    raise SystemExit(f"no enricher row in enricher_bench's output:\n{done.stdout}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--warmup", type=int, default=50_000)
    p.add_argument("--output-batches", default="256,1", help="comma-separated, e.g. 256,1")
    p.add_argument("--pods", type=int, default=2_000)
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--services", type=int, default=400)
    args = p.parse_args()
    batches = [int(b) for b in args.output_batches.split(",")]

    with tempfile.TemporaryDirectory(prefix="enricher-cluster-bench-") as tmp:
        single_base, cluster_base = free_port_block(2), free_port_block(6)
        single = Broker(Path(tmp) / "single", single_base, single_base + 1, heap_mb=384)
        cluster = Cluster(Path(tmp) / "cluster", cluster_base, heap_mb=384)
        targets = {"single": single.bootstrap, "cluster": cluster.bootstrap}
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        try:
            single.start()
            cluster.start()
            for rnd in range(1, args.rounds + 1):
                for batch in batches:
                    for name, bootstrap in targets.items():
                        rate, per_core = run_enricher_bench(bootstrap, args, batch)
                        results.setdefault((name, batch), []).append((rate, per_core))
                        print(
                            f"round {rnd} batch {batch:>4} {name:<8} {rate:>8,.0f} rec/s  "
                            f"{per_core:>8,.0f} rec/s/core  (load average "
                            f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)",
                            flush=True,
                        )
        finally:
            cluster.stop()
            single.stop()

    print(f"\nmedians over {args.rounds} rounds, {args.records} records each (the machine is")
    print("shared and loaded: compare ratios, not absolute figures):")
    for batch in batches:
        med = {name: statistics.median(r for r, _ in results[(name, batch)]) for name in targets}
        ratio = med["cluster"] / med["single"]
        print(
            f"  {batch:>4} records/message: single broker {med['single']:,.0f} rec/s, "
            f"3 brokers RF=3 acks=all {med['cluster']:,.0f} rec/s, ratio {ratio:.2f}"
        )
    if len(batches) > 1:
        base = batches[0]
        for batch in batches[1:]:
            for name in targets:
                a = statistics.median(r for r, _ in results[(name, base)])
                b = statistics.median(r for r, _ in results[(name, batch)])
                print(f"  {name}: {batch} / {base} records per message: {b / a:.2f} of the rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
