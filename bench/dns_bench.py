"""DNS capture overhead, side by side in the same rounds: DNS queries between simulated pods
without capture, then with bpf/dns.bpf.o attached and the collector's DNS pipeline (decode,
parse, match, encode; optionally produce to Kafka) running in this process, for UDP and TCP,
IPv4 and IPv6. Phases alternate so that drift on a shared machine hits both.

Prints per phase: queries/s answered, and with capture: events the kernel reported (a UDP
query matched in the kernel is one event per observing end: "pairs"), ring buffer losses,
queries answered without a client record (lost), this process's CPU per
query (all its threads; it runs only the pipeline: the DNS server and the load clients are
other processes in their pods), and the BPF programs' own ns per packet (bpf_stats, switched
on for the run and restored after; they run for every packet of every local socket). Then one
table with every mode's figures.

    sudo .venv/bin/python bench/dns_bench.py [--queries 40000] [--clients 2] [--window 32]
        [--rounds 2] [--modes udp4,udp6,tcp4,tcp6] [--rate 0] [--path native|python]
        [--search off,k8s] [--bootstrap 127.0.0.1:9092]

``--search``: the capture phases to run in each round, search marking off or on (``k8s``: every
client with the kubelet's resolv.conf for namespace ``bench``, ``ndots:5``; the load asks
``svcN.bench.svc.cluster.local``, the first expansion of ``svcN``, answered: the common case
in a cluster, a sequence opened by each query and closed by its answer). The configuration is
given, not read from the pods (ResolvConfReader's cached lookup is left out).

Needs root. The server and the load are C (bench/dnsload), one process each, on the same two
cores as the collector: the rate is what the machine reaches with all three.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from collector.dns.pipeline import DnsPipeline  # noqa: E402
from collector.dns.privacy import NamePrivacy  # noqa: E402
from collector.dns.search import SearchConfig, SearchTracker  # noqa: E402
from collector.dns.settings import DEFAULT_DNS_BPF_OBJECT  # noqa: E402
from collector.dns.source import DnsSource  # noqa: E402
from collector.node.attribution import CgroupResolver  # noqa: E402
from collector.settings import default_cgroup_root  # noqa: E402
from flowscope.kafka import ProducerCounters, RecordProducer  # noqa: E402
from simnode import Cluster, Pod  # noqa: E402

DNSLOAD = REPO / "bench" / "dnsload" / "dnsload"
MODES = ("udp4", "udp6", "tcp4", "tcp6")
SEARCH = {
    "off": None,
    "k8s": SearchConfig(("bench.svc.cluster.local", "svc.cluster.local", "cluster.local"), 5),
}


class CountingSink:
    """Counts records, and the client ends' answered ones (what each answered query owes)."""

    def __init__(self) -> None:
        self.counters = ProducerCounters()
        self.client_answered = 0

    def produce(self, topic: str, value: bytes | None, key: bytes | str | None = None) -> bool:
        self.counters.produced += 1
        if value and b'"role":"client"' in value and b'"outcome":"answered"' in value:
            self.client_answered += 1
        return True


def run_load(
    clients: list[Pod],
    server_ip: str,
    mode: str,
    queries: int,
    window: int,
    rate: float = 0,
    timeout_ms: int = 2000,
) -> dict[str, float]:
    """``rate``: queries/s of all clients together, 0 for as fast as answers come."""
    per_client = queries // len(clients)
    argv = [
        str(DNSLOAD),
        "client",
        server_ip,
        mode[:3],
        str(per_client),
        str(window),
        str(timeout_ms),
        str(rate / len(clients)),
    ]
    procs = [c.start(argv) for c in clients]
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


def capture_phase(
    clients: list[Pod],
    server_ip: str,
    mode: str,
    args: argparse.Namespace,
    search_setting: str = "off",
) -> dict[str, Any]:
    root = default_cgroup_root()
    resolver = CgroupResolver(root)
    resolver.refresh()
    sink: Any = RecordProducer(args.bootstrap, {}) if args.bootstrap else CountingSink()
    topic = f"bench-{uuid.uuid4().hex[:8]}.raw.dns"
    config = SEARCH[search_setting]
    search = SearchTracker(lambda _c: config, hold_s=2.0) if config is not None else None
    with DnsSource(DEFAULT_DNS_BPF_OBJECT, root, ringbuf_bytes=args.ringbuf_bytes) as source:
        pipeline = DnsPipeline(
            source,
            sink,
            resolver,
            "bench",
            topic,
            NamePrivacy(),
            timeout_s=2.0,
            search=search,
            native={"native": True, "python": False}[args.path],
        )
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                source.wait(0.05)
                pipeline.pump()
                if args.bootstrap:
                    sink.poll(0)

        runs0 = _bpf_stats(source.program_ids())
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        load = run_load(clients, server_ip, mode, args.queries, args.window, args.rate)
        time.sleep(0.3)  # the last responses' packets reach the ring
        stop.set()
        thread.join()
        pipeline.pump()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        counters = pipeline.counters()
        runs1 = _bpf_stats(source.program_ids())
        if args.bootstrap:
            sink.flush(30)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    runs, ns = runs1[0] - runs0[0], runs1[1] - runs0[1]
    client_answered = sink.client_answered if not args.bootstrap else counters["dns_answered"] // 2
    return {
        **load,
        "search": search_setting,
        "search_expansions": counters.get("dns_search_expansions", 0),
        "kernel_packets": counters["dns_kernel_events"],
        "kernel_lost_ringbuf": counters["dns_kernel_lost_ringbuf"],
        "kernel_pairs": counters["dns_kernel_pairs"],
        "kernel_held_retries": counters["dns_kernel_held_retries"],
        "kernel_pending_full": counters["dns_kernel_pending_full"],
        "decode_errors": counters["dns_decode_errors"],
        "records": counters["dns_records"],
        "timeouts": counters["dns_timeouts"],
        "missing": int(load["answered"]) - client_answered,
        "collector_cpu_s": cpu_s,
        "collector_cpu_us_per_query": cpu_s / max(1, load["answered"]) * 1e6,
        "collector_cpu_share": cpu_s / load["elapsed_s"],
        "bpf_runs": runs,
        "bpf_ns_per_run": ns / runs if runs else 0.0,
    }


def _bpf_stats(ids: list[int]) -> tuple[int, int]:
    """(runs, ns) of the programs as the kernel counts them (kernel.bpf_stats_enabled)."""
    runs = ns = 0
    for prog_id in ids:
        shown = subprocess.run(
            ["bpftool", "-j", "prog", "show", "id", str(prog_id)],
            capture_output=True,
            text=True,
            check=True,
        )
        info = json.loads(shown.stdout)
        runs += int(info.get("run_cnt", 0))
        ns += int(info.get("run_time_ns", 0))
    return runs, ns


def start_server(pod: Pod) -> subprocess.Popen[str]:
    proc = pod.start([str(DNSLOAD), "server", "53"])
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith('{"listening"'):
        raise SystemExit(f"dnsload server did not start: {line!r}")
    return proc


def summary(results: list[dict[str, Any]], modes: list[str], searches: list[str]) -> None:
    print(
        f"{'mode':5} {'search':6} {'q/s bare':>9} {'q/s capt':>9} {'ratio':>6} {'packets':>8} "
        f"{'pairs':>8} {'rb lost':>8} {'q lost':>7} {'µs/query':>9} {'bpf ns/pkt':>10}"
    )
    for mode in modes:
        base = [r for r in results if r["mode"] == mode and r["phase"] == "no capture"]
        for search in searches:
            caps = [
                r
                for r in results
                if r["mode"] == mode and r["phase"] == "capture" and r["search"] == search
            ]
            ratios = [c["qps"] / b["qps"] for b, c in zip(base, caps, strict=True)]
            for b, c, ratio in zip(base, caps, ratios, strict=True):
                us, ns = c["collector_cpu_us_per_query"], c["bpf_ns_per_run"]
                print(
                    f"{mode:5} {search:6} {b['qps']:9.0f} {c['qps']:9.0f} {ratio:6.2f} "
                    f"{c['kernel_packets']:8d} {c['kernel_pairs']:8d} "
                    f"{c['kernel_lost_ringbuf']:8d} "
                    f"{c['missing']:7d} {us:9.2f} {ns:10.0f}"
                )
            us_median = statistics.median(c["collector_cpu_us_per_query"] for c in caps)
            print(
                f"{mode:5} {search:6} median ratio {statistics.median(ratios):.2f}, "
                f"median µs/query {us_median:.2f}, "
                f"ring-buffer losses {sum(c['kernel_lost_ringbuf'] for c in caps)}, "
                f"queries without a record {sum(c['missing'] for c in caps)}"
            )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=40000)
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument(
        "--rate",
        type=float,
        default=0,
        help="queries/s of all clients together (default 0: as fast as they go)",
    )
    p.add_argument(
        "--path",
        choices=("native", "python"),
        default="native",
        help="the collector's DNS path: the C engine or the Python reference",
    )
    p.add_argument(
        "--search",
        default="off",
        help=f"capture phases per round, comma-separated: {', '.join(SEARCH)} (search marking)",
    )
    p.add_argument("--ringbuf-bytes", type=int, default=4 << 20)
    p.add_argument("--bootstrap", default="", help="produce to this Kafka (default: count only)")
    args = p.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        raise SystemExit(f"unknown modes {sorted(unknown)}; valid: {', '.join(MODES)}")
    searches = [m for m in args.search.split(",") if m]
    if not searches or (unknown := set(searches) - set(SEARCH)):
        raise SystemExit(f"unknown --search {args.search!r}; valid: {', '.join(SEARCH)}")
    subprocess.run(["make", "-C", str(REPO / "bpf")], check=True, capture_output=True)
    subprocess.run(["make", "-C", str(DNSLOAD.parent)], check=True, capture_output=True)
    stats_path = Path("/proc/sys/kernel/bpf_stats_enabled")
    old_stats = stats_path.read_text().strip()
    results: list[dict[str, Any]] = []
    with Cluster(dual_stack=True) as cluster:
        dns = cluster.add_pod("coredns", node="node-a1", namespace="kube-system")
        server = start_server(dns)
        clients = [cluster.add_pod(f"load{i}", node="node-b1") for i in range(args.clients)]
        addr = {4: dns.ip, 6: str(dns.ip6)}
        for mode in modes:
            run_load(clients, addr[int(mode[3])], mode, 2000, args.window)  # warm-up
        try:
            stats_path.write_text("1")
            for round_no in range(args.rounds):
                for mode in modes:
                    ip = addr[int(mode[3])]
                    base = run_load(clients, ip, mode, args.queries, args.window, args.rate)
                    results.append({"round": round_no, "mode": mode, "phase": "no capture", **base})
                    print(json.dumps(results[-1]), flush=True)
                    for search in searches:
                        cap = capture_phase(clients, ip, mode, args, search)
                        results.append({"round": round_no, "mode": mode, "phase": "capture", **cap})
                        print(json.dumps(results[-1]), flush=True)
        finally:
            stats_path.write_text(old_stats)
            server.terminate()
            server.communicate(timeout=10)
    rate = f"{args.rate:.0f} queries/s offered" if args.rate else "unpaced"
    print(
        f"collector path: {args.path}; load {rate}; ratio = rate with capture / rate "
        "without, same round"
    )
    summary(results, modes, searches)
    return 0


if __name__ == "__main__":
    sys.exit(main())
