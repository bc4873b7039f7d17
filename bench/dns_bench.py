"""DNS capture overhead, side by side: UDP queries between simulated pods without capture,
then with bpf/dns.bpf.o attached and the collector's DNS pipeline (decode, parse, match,
encode; optionally produce to Kafka) running in this process. Phases alternate so that
drift on a shared machine hits both.

Prints per phase: queries/s answered, and with capture: packets seen by the kernel, ring
buffer losses, records (two per query: client and server end), queries missing a record,
and this process's CPU per query (it runs only the pipeline: the DNS server and the load
clients are other processes in their pods). With ``--bpf-stats``, kernel.bpf_stats_enabled
is switched on for the run (restored after) to report the BPF programs' own ns per packet.

    sudo .venv/bin/python bench/dns_bench.py [--queries 20000] [--clients 2] [--window 16]
        [--rounds 2] [--bootstrap 127.0.0.1:9092] [--bpf-stats]

Needs root. The load is Python (simnode.dns load/server), so the rate is bounded by the
Python DNS server on this machine, not by the capture; the capture's loss and CPU per
query are the numbers that transfer.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from collector.attribution import CgroupResolver  # noqa: E402
from collector.dns.pipeline import DnsPipeline  # noqa: E402
from collector.dns.privacy import NamePrivacy  # noqa: E402
from collector.dns.settings import DEFAULT_DNS_BPF_OBJECT  # noqa: E402
from collector.dns.source import DnsSource  # noqa: E402
from collector.settings import default_cgroup_root  # noqa: E402
from flowscope.kafka import ProducerCounters, RecordProducer  # noqa: E402
from simnode import Cluster, Pod  # noqa: E402
from simnode.dns import DnsServerProcess  # noqa: E402

NAMES = [f"svc{i}.bench.svc.cluster.local" for i in range(50)]
RULES: dict[str, Any] = {"names": {"*.bench.svc.cluster.local": {"addrs": ["10.96.9.9"]}}}


class CountingSink:
    def __init__(self) -> None:
        self.counters = ProducerCounters()
        self.bytes = 0

    def produce(self, topic: str, value: bytes | None, key: bytes | str | None = None) -> bool:
        self.counters.produced += 1
        self.bytes += len(value or b"")
        return True


def run_load(clients: list[Pod], server_ip: str, queries: int, window: int) -> dict[str, float]:
    per_client = queries // len(clients)
    procs = [c.start(Pod.python("simnode.dns", "load", "--server", server_ip, "--count",
                                str(per_client), "--window", str(window), *NAMES))
             for c in clients]  # fmt: skip
    start = time.monotonic()
    answered = lost = 0
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"load client failed: {err}")
        summary = json.loads(out.strip().splitlines()[-1])
        answered += summary["answered"]
        lost += summary["lost"]
    elapsed = time.monotonic() - start
    return {"answered": answered, "lost": lost, "elapsed_s": elapsed, "qps": answered / elapsed}


def capture_phase(clients: list[Pod], dns: Pod, args: argparse.Namespace) -> dict[str, Any]:
    root = default_cgroup_root()
    resolver = CgroupResolver(root)
    resolver.refresh()
    sink: Any = RecordProducer(args.bootstrap, {}) if args.bootstrap else CountingSink()
    topic = f"bench-{uuid.uuid4().hex[:8]}.raw.dns"
    with DnsSource(DEFAULT_DNS_BPF_OBJECT, root, ringbuf_bytes=args.ringbuf_bytes) as source:
        pipeline = DnsPipeline(source, sink, resolver, "bench", topic, NamePrivacy(),
                               timeout_s=2.0, search=None)  # fmt: skip
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                source.wait(0.05)
                pipeline.pump()
                if args.bootstrap:
                    sink.poll(0)

        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        load = run_load(clients, dns.ip, args.queries, args.window)
        time.sleep(0.5)
        stop.set()
        thread.join()
        pipeline.pump()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        counters = pipeline.counters()
        bpf = _bpf_stats(source.program_ids())
        if args.bootstrap:
            sink.flush(30)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    client_answered = counters["dns_answered"] // 2
    return {
        **load,
        "kernel_packets": counters["dns_kernel_events"],
        "kernel_lost_ringbuf": counters["dns_kernel_lost_ringbuf"],
        "decode_errors": counters["dns_decode_errors"],
        "records": counters["dns_records"],
        "answered_records": counters["dns_answered"],
        "timeouts": counters["dns_timeouts"],
        "missing": int(load["answered"]) - client_answered,
        "collector_cpu_s": cpu_s,
        "collector_cpu_us_per_query": cpu_s / max(1, load["answered"]) * 1e6,
        "collector_cpu_share": cpu_s / load["elapsed_s"],
        **bpf,
    }


def _bpf_stats(ids: list[int]) -> dict[str, float]:
    """The programs' own run time as the kernel counts it (with kernel.bpf_stats_enabled).
    They run for every packet of every local socket, DNS or not."""
    runs = ns = 0
    for prog_id in ids:
        shown = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)],
                               capture_output=True, text=True, check=True)  # fmt: skip
        info = json.loads(shown.stdout)
        runs += int(info.get("run_cnt", 0))
        ns += int(info.get("run_time_ns", 0))
    return {"bpf_runs": runs, "bpf_ns_per_run": ns / runs if runs else 0.0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=20000)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--ringbuf-bytes", type=int, default=4 << 20)
    p.add_argument("--bootstrap", default="", help="produce to this Kafka (default: count only)")
    p.add_argument("--bpf-stats", action="store_true")
    args = p.parse_args()
    subprocess.run(["make", "-C", str(REPO / "bpf")], check=True, capture_output=True)
    stats_path = Path("/proc/sys/kernel/bpf_stats_enabled")
    old_stats = stats_path.read_text().strip()
    results: list[dict[str, Any]] = []
    with Cluster() as cluster:
        dns = cluster.add_pod("coredns", node="node-a1", namespace="kube-system")
        server = DnsServerProcess(dns, RULES)
        clients = [cluster.add_pod(f"load{i}", node="node-b1") for i in range(args.clients)]
        run_load(clients, dns.ip, 1000, args.window)  # warm-up
        try:
            if args.bpf_stats:
                stats_path.write_text("1")
            for round_no in range(args.rounds):
                base = run_load(clients, dns.ip, args.queries, args.window)
                results.append({"round": round_no, "phase": "no capture", **base})
                print(json.dumps(results[-1]), flush=True)
                cap = capture_phase(clients, dns, args)
                results.append({"round": round_no, "phase": "capture", **cap})
                print(json.dumps(results[-1]), flush=True)
        finally:
            stats_path.write_text(old_stats)
            server.stop()
    base_qps = [r["qps"] for r in results if r["phase"] == "no capture"]
    cap_qps = [r["qps"] for r in results if r["phase"] == "capture"]
    print(f"queries/s without capture {sum(base_qps) / len(base_qps):.0f}, with capture "
          f"{sum(cap_qps) / len(cap_qps):.0f}")  # fmt: skip
    caps = [r for r in results if r["phase"] == "capture"]
    print(f"lost in kernel {sum(r['kernel_lost_ringbuf'] for r in caps)}, queries without a "
          f"record {sum(r['missing'] for r in caps)}, collector CPU "
          f"{sum(r['collector_cpu_us_per_query'] for r in caps) / len(caps):.1f} µs/query "
          f"(both ends: 4 packets, 2 records)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
