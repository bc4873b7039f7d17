"""Collector overhead, side by side in one run: short connections between two simulated pods
with a C load generator, without the collector and with it (``python -m collector`` producing
to a real broker), alternating phases so that drift on a shared machine hits both.

Prints: connections/s without and with, their ratio, events lost (kernel ring buffer, decode,
Kafka), collector CPU seconds per 1,000 connections (and µs per connection end, per thread),
peak RSS, and page faults per connection end (each costs microseconds on a VM: memory given
back to the kernel and faulted in again per batch would show there).
The collector runs as the shipped manifests run it, DNS capture on. A third phase, "kernel
only", attaches the same BPF programs (TCP, UDP, DNS) with a reader that only empties the
TCP ring buffer (no decoding, no Kafka; the bench makes no DNS traffic): the rate with the
kernel's part alone. After the rounds, one more such phase runs with
kernel.bpf_stats_enabled on (restored after): the programs' own run time per connection,
measured by the kernel, which the shared machine's noise in connection rates cannot hide,
printed per program (runs per connection x ns per run). The stats are off in the rounds:
their two clock reads per program run cost the rate ~2 points here. Every ratio is printed
per round too, best first. ``--kernel-only`` runs only these phases and needs no broker:
with ``--variant``, it compares BPF objects (before/after a change) in the same rounds.
``--drops`` adds a kernel-only phase with the drop counter (bpf/drops.bpf.o on
skb:kfree_skb) attached as well, in the same rounds, and prints its rate against the phase
without it: the hook's cost; the bpf_stats phase then includes it.

    sudo .venv/bin/python bench/collector_bench.py [--seconds 5] [--rounds 2] [--threads 2]
        [--bootstrap 127.0.0.1:9092] [--variant LABEL=[ROOT][:KEY=VALUE,...]]...
        [--no-kernel | --kernel-only] [--kernel-steps]

``--variant`` runs more than one collector in the same rounds, each phase after the other:
ROOT is a tree holding collector/, flowscope/ and bpf/.output/ (default: this repository),
KEY=VALUE are FLOWSCOPE_* environment settings for it. Example, before/after a change and
batching on/off: ``--variant before=/tmp/before --variant b1=:FLOWSCOPE_COLLECTOR_BATCH_RECORDS=1
--variant b256=:FLOWSCOPE_COLLECTOR_BATCH_RECORDS=256``. Without it: one variant "collector".
The kernel-only phase is run per distinct ROOT (its bpf/.output objects).

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
ALL_PARTS = "tcp+udp+dns"  # the program sets the collector attaches (DNS capture on)
DROPS_PARTS = ALL_PARTS + "+drops"  # and the kernel drop counter (skb:kfree_skb)


@dataclass(frozen=True)
class Variant:
    label: str
    root: Path
    env: tuple[tuple[str, str], ...]


def parse_variant(text: str) -> Variant:
    label, sep, rest = text.partition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=[ROOT][:KEY=VALUE,...]")
    root_text, _, env_text = rest.partition(":")
    env = tuple(tuple(kv.split("=", 1)) for kv in env_text.split(",") if kv)
    if any(len(kv) != 2 for kv in env):
        raise argparse.ArgumentTypeError(f"{text!r}: settings must be KEY=VALUE")
    return Variant(label, Path(root_text) if root_text else REPO, env)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Phase:
    mode: str  # "none", "kernel:<root>", or a variant's label
    connections: int
    errors: int
    seconds: float
    round: int = 0

    @property
    def rate(self) -> float:
        return self.connections / self.seconds


def build() -> None:
    for target in (REPO / "bpf", REPO / "bench" / "loadgen"):
        subprocess.run(["make", "-s", "-C", str(target)], check=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def local_broker_pid() -> int | None:
    """The Kafka broker on this machine (main class kafka.Kafka), if there is one: its CPU
    during the collector's phases is taken from the same two cores as the load, a cost a
    real node does not pay (its broker runs elsewhere), so it is reported apart."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kafka.Kafka" in args:
            return int(proc.name)
    return None


def minor_faults(pid: int) -> int:
    """Page faults of the whole process: each costs microseconds on this VM, so memory
    handed back to the kernel and faulted in again per batch shows up as CPU."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (the Python thread vs librdkafka's rdk:* threads)."""
    found: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended
        name = stat.split("(", 1)[1].rsplit(")", 1)[0]
        name = "python" if name.startswith("python") else name.split("/")[0]
        found[name] = found.get(name, 0.0) + cpu_of_stat(stat)
    return found


def cpu_of_stat(stat: str) -> float:
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_load(client: Pod, server_ip: str, threads: int, seconds: float) -> tuple[int, int, float]:
    t0 = time.monotonic()
    done = client.run(
        [str(LOADGEN), "client", server_ip, str(PORT), str(threads), str(seconds)],
        timeout_s=seconds + 60,
    )
    elapsed = time.monotonic() - t0
    words = done.stdout.split()
    return int(words[1]), int(words[3]), elapsed


class KernelOnly:
    """The collector's BPF programs attached, with a thread that only empties the ring;
    with ``stats``, kernel.bpf_stats_enabled is on meanwhile and :attr:`runs` filled."""

    def __init__(
        self, cgroup_root: Path, root: Path, stats: bool = False, parts: str = ALL_PARTS
    ) -> None:
        """``parts``: which program sets to attach besides TCP's ("tcp", "tcp+udp", ...)."""
        from collector.dns.source import DnsSource
        from collector.drops.reporter import DropSource
        from collector.settings import Settings
        from collector.tcp.source import TcpConnSource
        from collector.udp.flows import UdpFlowSource

        # The objects of ``root`` with this tree's loader: the ABI is the same.
        objects = root / "bpf" / ".output"
        self._tcp = TcpConnSource(
            objects / "tcpconn.bpf.o", ringbuf_bytes=16 << 20, wakeup_bytes=Settings.wakeup_bytes
        )
        self._udp = (
            UdpFlowSource(objects / "udpflow.bpf.o", cgroup_root) if "udp" in parts else None
        )
        self._dns = DnsSource(objects / "dns.bpf.o", cgroup_root) if "dns" in parts else None
        self._drops = DropSource(objects / "drops.bpf.o") if "drops" in parts else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self.lost = 0
        self._ids = self._tcp.program_ids()
        for extra in (self._udp, self._dns, self._drops):
            self._ids += extra.program_ids() if extra is not None else []
        self._stats = stats
        self._stats_was = STATS.read_text().strip()
        self.runs: dict[str, tuple[int, int]] = {}  # program -> (run_cnt, run_time_ns)

    def _drain(self) -> None:
        while not self._stop.is_set():
            self._tcp.wait(0.1)
            self._tcp.read()

    def __enter__(self) -> KernelOnly:
        if self._stats:
            STATS.write_text("1")
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.lost = self._tcp.kernel_counters()["lost_ringbuf"]
        if self._dns is not None:
            self.lost += self._dns.kernel_counters()["lost_ringbuf"]
        for prog_id in self._ids if self._stats else ():
            shown = json.loads(
                subprocess.run(
                    ["bpftool", "-j", "prog", "show", "id", str(prog_id)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            self.runs[shown["name"]] = (shown.get("run_cnt", 0), shown.get("run_time_ns", 0))
        if self._stats:
            STATS.write_text(self._stats_was)
        self._tcp.close()
        for extra in (self._udp, self._dns, self._drops):
            if extra is not None:
                extra.close()


class CollectorProcess:
    def __init__(self, bootstrap: str, prefix: str, variant: Variant) -> None:
        # DNS capture on, as the shipped manifests run it (k8s/configmap.yaml, compose).
        env = {
            **os.environ,
            "FLOWSCOPE_BOOTSTRAP_SERVERS": bootstrap,
            "FLOWSCOPE_TOPIC_PREFIX": prefix,
            "FLOWSCOPE_DNS_ENABLED": "true",
            **dict(variant.env),
        }
        env["PYTHONPATH"] = str(variant.root)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "collector",
                "--stats-interval-seconds",
                "1",
                "--ringbuf-bytes",
                str(16 << 20),
                "--node-name",
                "bench",
            ],
            cwd=variant.root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
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
        # Where a kernel loss first shows (stats lines come every second): at start, under
        # load, or at shutdown. Printed because losses so far were single and unexplained.
        stats = [line for line in self.log if " stats " in line]
        lossy = [i for i, line in enumerate(stats) if "kernel_lost_ringbuf=0 " not in line]
        if lossy:
            print(
                f"  (ring buffer loss first in stats line {lossy[0] + 1} of {len(stats)}: "
                f"{stats[lossy[0]].split(' stats ')[0]})",
                file=sys.stderr,
            )
        return {
            k: int(v) for k, v in (kv.split("=") for kv in final.split("final stats ")[1].split())
        }


def mean_ratio(phases: list[Phase], mode: str) -> float:
    """Mean over rounds of (this mode's rate / the same round's rate without a collector):
    each round's phases run back to back, so the machine's drift cancels out."""
    by_round: dict[int, dict[str, float]] = {}
    for ph in phases:
        by_round.setdefault(ph.round, {})[ph.mode] = ph.rate
    return statistics.mean(r[mode] / r["none"] for r in by_round.values())


def round_ratios(phases: list[Phase], mode: str) -> str:
    """Each round's ratio, best first: on a shared machine the spread says how much of the
    mean is noise, and the best round is the least disturbed one."""
    by_round: dict[int, dict[str, float]] = {}
    for ph in phases:
        by_round.setdefault(ph.round, {})[ph.mode] = ph.rate
    ratios = sorted((r[mode] / r["none"] for r in by_round.values()), reverse=True)
    return ", ".join(f"{x:.1%}" for x in ratios)


def bpf_line(by_prog: dict[str, tuple[int, int]], conns: int) -> str:
    """Per program: runs per connection x ns per run (run_time_ns / run_cnt, measured by
    the kernel with kernel.bpf_stats_enabled, which adds its own two clock reads per run)."""
    n = max(conns, 1)
    total_ns = sum(ns for _, ns in by_prog.values())
    return f"{total_ns / n / 1000:.2f} µs per connection: " + ", ".join(
        f"{name} {cnt / n:.1f} runs x {ns / max(cnt, 1):.0f} ns = {ns / n:.0f} ns"
        for name, (cnt, ns) in sorted(by_prog.items())
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        default=[],
        help="LABEL=[ROOT][:KEY=VALUE,...], repeatable (see above)",
    )
    p.add_argument("--no-kernel", action="store_true", help="skip the kernel-only phases")
    p.add_argument(
        "--kernel-steps",
        action="store_true",
        help="kernel-only phases with the TCP programs alone and with TCP+UDP too, in the same "
        "rounds: what each program set costs the rate",
    )
    p.add_argument(
        "--kernel-only", action="store_true", help="only the kernel-only phases, no collector"
    )
    p.add_argument(
        "--drops",
        action="store_true",
        help="kernel-only phases with the drop counter attached too: the skb:kfree_skb hook's "
        "cost in the same rounds",
    )
    args = p.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: it loads BPF programs and creates network namespaces")
    variants: list[Variant] = args.variant or [Variant("collector", REPO, ())]
    roots = [] if args.no_kernel else list(dict.fromkeys(v.root for v in variants))
    steps = ["tcp", "tcp+udp", ALL_PARTS] if args.kernel_steps else [ALL_PARTS]
    if args.drops:
        steps.insert(-1, DROPS_PARTS)
    if args.kernel_only and args.no_kernel:
        sys.exit("--kernel-only and --no-kernel leave nothing to run")
    build()
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    if not args.kernel_only:
        wait_for_broker(args.bootstrap)
        ensure_topics(args.bootstrap, [TopicSpec(f"{prefix}.raw.tcp", partitions=3)])

    phases: list[Phase] = []
    kernel_lost: dict[Path, int] = {}
    runs: dict[Path, tuple[int, dict[str, tuple[int, int]]]] = {}  # root -> (conns, by program)
    cpu: dict[str, float] = {}
    faults: dict[str, int] = {}
    threads: dict[str, dict[str, float]] = {}
    peak: dict[str, float] = {}
    totals: dict[str, dict[str, int]] = {}
    broker = None if args.kernel_only else local_broker_pid()
    broker_cpu: dict[str, float] = {}  # phase mode -> broker CPU seconds during it
    busy: dict[str, float] = {}  # phase mode -> load seconds
    with Cluster([NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]) as c:
        server = c.add_pod("server", node="node-b1")
        client = c.add_pod("client", node="node-a1")
        for pod in (client, server):
            pod.run(
                [
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv4.tcp_tw_reuse=1",
                    "net.ipv4.ip_local_port_range=10000 65000",
                ]
            )
        srv = server.start(
            [str(LOADGEN), "server", str(PORT), str(args.threads)], stdout=subprocess.DEVNULL
        )
        server.wait_listening(PORT, proc=srv)
        run_load(client, server.ip, args.threads, 1.0)  # warm up
        for rnd in range(args.rounds):
            b0 = cpu_seconds(broker) if broker else 0.0
            phases.append(
                Phase("none", *run_load(client, server.ip, args.threads, args.seconds), round=rnd)
            )
            if broker:
                broker_cpu["none"] = broker_cpu.get("none", 0.0) + cpu_seconds(broker) - b0
                busy["none"] = busy.get("none", 0.0) + phases[-1].seconds
            for root in roots:
                for parts in steps:
                    with KernelOnly(c.cgroup_root, root, parts=parts) as kernel:
                        ok, errors, elapsed = run_load(
                            client, server.ip, args.threads, args.seconds
                        )
                    kernel_lost[root] = kernel_lost.get(root, 0) + kernel.lost
                    suffix = "" if parts == ALL_PARTS else f":{parts}"
                    phases.append(Phase(f"kernel:{root}{suffix}", ok, errors, elapsed, round=rnd))
            for v in [] if args.kernel_only else variants:
                collector = CollectorProcess(args.bootstrap, prefix, v)
                cpu0 = cpu_seconds(collector.proc.pid)
                faults0 = minor_faults(collector.proc.pid)
                threads0 = thread_cpu_seconds(collector.proc.pid)
                b0 = cpu_seconds(broker) if broker else 0.0
                ok, errors, elapsed = run_load(client, server.ip, args.threads, args.seconds)
                phases.append(Phase(v.label, ok, errors, elapsed, round=rnd))
                if broker:
                    used = cpu_seconds(broker) - b0
                    broker_cpu[v.label] = broker_cpu.get(v.label, 0.0) + used
                    busy[v.label] = busy.get(v.label, 0.0) + elapsed
                time.sleep(1.0)  # let it drain what the last connections produced
                cpu[v.label] = cpu.get(v.label, 0.0) + cpu_seconds(collector.proc.pid) - cpu0
                faults[v.label] = (
                    faults.get(v.label, 0) + minor_faults(collector.proc.pid) - faults0
                )
                mine_threads = threads.setdefault(v.label, {})
                for name, secs in thread_cpu_seconds(collector.proc.pid).items():
                    delta = secs - threads0.get(name, 0.0)
                    mine_threads[name] = mine_threads.get(name, 0.0) + delta
                peak[v.label] = max(peak.get(v.label, 0.0), peak_rss_mib(collector.proc.pid))
                mine_totals = totals.setdefault(v.label, {})
                for k, val in collector.stop().items():
                    mine_totals[k] = mine_totals.get(k, 0) + val
        # The programs' own run time, apart: bpf_stats would cost the rounds' rates.
        for root in roots:
            stats_parts = DROPS_PARTS if args.drops else ALL_PARTS
            with KernelOnly(c.cgroup_root, root, stats=True, parts=stats_parts) as kernel:
                ok, _, _ = run_load(client, server.ip, args.threads, args.seconds)
            kernel_lost[root] += kernel.lost
            runs[root] = (ok, kernel.runs)

    def rates(mode: str) -> list[float]:
        return [ph.rate for ph in phases if ph.mode == mode]

    def line(mode: str) -> str:
        r = rates(mode)
        return f"{statistics.mean(r):>8,.0f}/s  (phases: {', '.join(f'{x:,.0f}' for x in r)})"

    print(f"without collector:  {line('none')}")
    for root in roots:
        mode = f"kernel:{root}"
        print(
            f"kernel only {root}: {line(mode)}  ratio {mean_ratio(phases, mode):.1%} "
            f"(rounds: {round_ratios(phases, mode)}), "
            f"ring buffer losses {kernel_lost[root]} (stats phase included)"
        )
        for parts in steps[:-1]:
            mode = f"kernel:{root}:{parts}"
            print(
                f"  {parts} programs only: {line(mode)}  ratio {mean_ratio(phases, mode):.1%} "
                f"(rounds: {round_ratios(phases, mode)})"
            )
        if args.drops:
            with_drops = mean_ratio(phases, f"kernel:{root}:{DROPS_PARTS}")
            without = mean_ratio(phases, f"kernel:{root}")
            print(
                f"  drop counter (skb:kfree_skb): rate with/without it {with_drops / without:.1%}"
                f" ({with_drops:.1%} vs {without:.1%} of no collector)"
            )
        conns, by_prog = runs[root]
        print(f"  BPF run time (one more phase, bpf_stats on): {bpf_line(by_prog, conns)}")
    for v in [] if args.kernel_only else variants:
        t = totals[v.label]
        conns = sum(ph.connections for ph in phases if ph.mode == v.label)
        lost = {
            k: t.get(k, 0)
            for k in (
                "kernel_lost_ringbuf",
                "kernel_track_failed",
                "kernel_recursion_misses",
                "decode_errors",
                "dropped_buffer_full",
                "delivery_failed",
            )
        }
        per_end = cpu[v.label] / max(conns, 1) * 1e6 / 2
        env = ",".join(f"{k}={val}" for k, val in v.env)
        print(f"{v.label} ({v.root}{' ' + env if env else ''}):")
        print(
            f"  rate {line(v.label)}  ratio with/without {mean_ratio(phases, v.label):.1%} "
            f"(rounds: {round_ratios(phases, v.label)})"
        )
        print(
            f"  connections {conns:,} ({2 * conns:,} ends); events {t.get('events', 0):,}, "
            f"records produced {t.get('records_produced', t.get('produced', 0)):,} in "
            f"{t.get('produced', 0):,} messages, delivered {t.get('delivered', 0):,} messages"
        )
        print(f"  lost {sum(lost.values())} {lost}")
        if broker and busy.get(v.label):
            share = broker_cpu[v.label] / busy[v.label] / (os.cpu_count() or 1)
            idle = broker_cpu.get("none", 0.0) / max(busy.get("none", 0.0), 1e-9)
            idle /= os.cpu_count() or 1
            print(
                f"  the local broker took {share:.1%} of the machine's CPU during these "
                f"phases ({idle:.1%} without the collector): load this bench's rig puts on "
                f"the same cores, not the collector's"
            )
        by_thread = ", ".join(
            f"{name} {secs / max(conns, 1) * 1e6 / 2:.2f}"
            for name, secs in sorted(threads[v.label].items(), key=lambda kv: -kv[1])
            if secs > 0
        )
        print(f"  CPU µs per connection end by thread: {by_thread}")
        print(
            f"  CPU {cpu[v.label]:.2f} s = {per_end * 2 / 1000:.4f} s per 1,000 connections "
            f"= {per_end:.2f} µs per connection end ({per_end * 2:.2f} per connection); "
            f"peak RSS {peak[v.label]:.0f} MiB; "
            f"{faults[v.label] / max(2 * conns, 1):.3f} page faults per connection end"
        )
    print(f"loadgen errors: {sum(ph.errors for ph in phases)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
