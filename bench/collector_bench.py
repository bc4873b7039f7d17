"""Collector overhead, side by side in one run: short connections between two simulated pods
with a C load generator, without the collector and with it (``python -m collector`` producing
to a real broker), alternating phases so that drift on a shared machine hits both.

Prints: connections/s without and with, their ratio, events lost (kernel ring buffer, decode,
Kafka), collector CPU seconds per 1,000 connections (and µs per connection end), peak RSS.
A third phase, "kernel only", attaches the same BPF programs with a reader that only empties
the ring buffer (no decoding, no Kafka), with kernel.bpf_stats_enabled on for its duration
(restored after): the programs' own run time per connection, measured by the kernel, which
the shared machine's noise in connection rates cannot hide.

    sudo .venv/bin/python bench/collector_bench.py [--seconds 5] [--rounds 2] [--threads 2]
        [--bootstrap 127.0.0.1:9092]

Needs root, gcc, and a broker (``python -m devbroker start``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flowscope.kafka import TopicSpec, ensure_topics, wait_for_broker  # noqa: E402
from simnode import Cluster, NodeSpec, Pod  # noqa: E402

LOADGEN = REPO / "bench" / "loadgen" / "loadgen"
PORT = 7070
CLK_TCK = os.sysconf("SC_CLK_TCK")
STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


@dataclass(frozen=True)
class Phase:
    mode: str  # "none", "kernel", "collector"
    connections: int
    errors: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.connections / self.seconds


def build() -> None:
    for target in (REPO / "bpf", REPO / "bench" / "loadgen"):
        subprocess.run(["make", "-s", "-C", str(target)], check=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_load(client: Pod, server_ip: str, threads: int, seconds: float) -> tuple[int, int, float]:
    t0 = time.monotonic()
    done = client.run([str(LOADGEN), "client", server_ip, str(PORT), str(threads), str(seconds)],
                      timeout_s=seconds + 60)  # fmt: skip
    elapsed = time.monotonic() - t0
    words = done.stdout.split()
    return int(words[1]), int(words[3]), elapsed


class KernelOnly:
    """The collector's BPF programs attached, with a thread that only empties the ring."""

    def __init__(self, cgroup_root: Path) -> None:
        from collector.settings import DEFAULT_BPF_OBJECT, DEFAULT_UDP_BPF_OBJECT, Settings
        from collector.source import TcpConnSource
        from collector.udp import UdpFlowSource

        self._tcp = TcpConnSource(DEFAULT_BPF_OBJECT, ringbuf_bytes=16 << 20,
                                  wakeup_bytes=Settings.wakeup_bytes)  # fmt: skip
        self._udp = UdpFlowSource(DEFAULT_UDP_BPF_OBJECT, cgroup_root)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self.lost = 0
        self._ids = self._tcp.program_ids() + self._udp.program_ids()
        self._stats_was = STATS.read_text().strip()
        self.runs: dict[str, tuple[int, int]] = {}  # program -> (run_cnt, run_time_ns)

    def _drain(self) -> None:
        while not self._stop.is_set():
            self._tcp.wait(0.1)
            self._tcp.read()

    def __enter__(self) -> KernelOnly:
        STATS.write_text("1")
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.lost = self._tcp.kernel_counters()["lost_ringbuf"]
        for prog_id in self._ids:
            shown = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "id",
                                               str(prog_id)], capture_output=True,
                                              text=True, check=True).stdout)  # fmt: skip
            self.runs[shown["name"]] = (shown.get("run_cnt", 0), shown.get("run_time_ns", 0))
        STATS.write_text(self._stats_was)
        self._tcp.close()
        self._udp.close()


class CollectorProcess:
    def __init__(self, bootstrap: str, prefix: str) -> None:
        env = {**os.environ, "FLOWSCOPE_BOOTSTRAP_SERVERS": bootstrap,
               "FLOWSCOPE_TOPIC_PREFIX": prefix}  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collector", "--stats-interval-s", "1",
             "--ringbuf-bytes", str(16 << 20), "--node-name", "bench"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.log: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(60):
            self.proc.kill()
            raise RuntimeError("collector did not start:\n" + "".join(self.log))

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            if "collector ready" in line:
                self._ready.set()

    def stop(self) -> dict[str, int]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        time.sleep(0.2)
        final = next(line for line in reversed(self.log) if "final stats" in line)
        return {k: int(v) for k, v in
                (kv.split("=") for kv in final.split("final stats ")[1].split())}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: it loads BPF programs and creates network namespaces")
    build()
    wait_for_broker(args.bootstrap)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    ensure_topics(args.bootstrap, [TopicSpec(f"{prefix}.raw.tcp", partitions=3)])

    phases: list[Phase] = []
    kernel_lost = 0
    kernel_conns = 0
    runs: dict[str, tuple[int, int]] = {}
    cpu = 0.0
    peak = 0.0
    totals: dict[str, int] = {}
    with Cluster([NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]) as c:
        server = c.add_pod("server", node="node-b1")
        client = c.add_pod("client", node="node-a1")
        for pod in (client, server):
            pod.run(["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1",
                     "net.ipv4.ip_local_port_range=10000 65000"])  # fmt: skip
        srv = server.start([str(LOADGEN), "server", str(PORT), str(args.threads)],
                           stdout=subprocess.DEVNULL)  # fmt: skip
        server.wait_listening(PORT, proc=srv)
        run_load(client, server.ip, args.threads, 1.0)  # warm up
        for _ in range(args.rounds):
            for mode in ("none", "kernel", "collector"):
                if mode == "kernel":
                    with KernelOnly(c.cgroup_root) as kernel:
                        ok, errors, elapsed = run_load(client, server.ip, args.threads,
                                                       args.seconds)  # fmt: skip
                    kernel_lost += kernel.lost
                    kernel_conns += ok
                    for name, (cnt, ns) in kernel.runs.items():
                        old = runs.get(name, (0, 0))
                        runs[name] = (old[0] + cnt, old[1] + ns)
                    phases.append(Phase(mode, ok, errors, elapsed))
                    continue
                with_collector = mode == "collector"
                collector = CollectorProcess(args.bootstrap, prefix) if with_collector else None
                cpu0 = cpu_seconds(collector.proc.pid) if collector else 0.0
                ok, errors, elapsed = run_load(client, server.ip, args.threads, args.seconds)
                phases.append(Phase(mode, ok, errors, elapsed))
                if collector is not None:
                    time.sleep(1.0)  # let it drain what the last connections produced
                    cpu += cpu_seconds(collector.proc.pid) - cpu0
                    peak = max(peak, peak_rss_mib(collector.proc.pid))
                    for k, v in collector.stop().items():
                        totals[k] = totals.get(k, 0) + v

    without = [ph.rate for ph in phases if ph.mode == "none"]
    kernel_only = [ph.rate for ph in phases if ph.mode == "kernel"]
    with_ = [ph.rate for ph in phases if ph.mode == "collector"]
    conns_with = sum(ph.connections for ph in phases if ph.mode == "collector")
    lost = {k: totals.get(k, 0) for k in
            ("kernel_lost_ringbuf", "kernel_track_failed", "kernel_recursion_misses",
             "decode_errors", "dropped_buffer_full", "delivery_failed")}  # fmt: skip
    rate_without, rate_with = statistics.mean(without), statistics.mean(with_)
    print(f"connections/s without collector: {rate_without:,.0f}  (phases: "
          f"{', '.join(f'{r:,.0f}' for r in without)})")  # fmt: skip
    print(f"connections/s with collector:    {rate_with:,.0f}  (phases: "
          f"{', '.join(f'{r:,.0f}' for r in with_)})")  # fmt: skip
    print(f"connections/s kernel only:       {statistics.mean(kernel_only):,.0f}  (phases: "
          f"{', '.join(f'{r:,.0f}' for r in kernel_only)}; ring buffer losses {kernel_lost})")
    print(f"ratio with/without:              {rate_with / rate_without:.1%}  (kernel only: "
          f"{statistics.mean(kernel_only) / rate_without:.1%})")  # fmt: skip
    print(f"connections with collector:      {conns_with:,} ({2 * conns_with:,} ends); "
          f"collector events {totals.get('events', 0):,}, produced {totals.get('produced', 0):,}")
    print(f"events lost:                     {sum(lost.values())}  {lost}")
    per_k = cpu / conns_with * 1000 if conns_with else float("nan")
    print(f"collector CPU:                   {cpu:.2f} s = {per_k:.3f} s per 1,000 connections "
          f"= {per_k * 1000 / 2:.1f} µs per connection end")  # fmt: skip
    print(f"collector peak RSS:              {peak:.0f} MiB")
    total_ns = sum(ns for _, ns in runs.values())
    print(f"BPF run time (kernel only):      {total_ns / max(kernel_conns, 1) / 1000:.2f} µs "
          f"per connection: " + ", ".join(
              f"{n} {c / max(kernel_conns, 1):.1f} runs x {ns / max(c, 1):.0f} ns"
              for n, (c, ns) in sorted(runs.items())))  # fmt: skip
    print(f"loadgen errors:                  {sum(ph.errors for ph in phases)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
