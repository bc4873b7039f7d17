"""The collector's settings: one frozen object, built once in ``__main__`` from the command
line, with defaults from ``FLOWSCOPE_*`` environment variables (passed in, never read here).
"""

from __future__ import annotations

import argparse
import mmap
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from collector.dns import settings as dns_settings
from collector.errors import CollectorError
from collector.node.nat import parse_cidrs
from flowscope import kafka_security, settings
from flowscope.kafka_security import PLAINTEXT, KafkaSecurity
from flowscope.resources import shipped
from flowscope.settings import (
    between,
    group,
    non_negative,
    optional_path,
    positive,
    setting,
)
from flowscope.topics import Topics

DEFAULT_BPF_OBJECT = shipped("tcpconn.bpf.o")
DEFAULT_UDP_BPF_OBJECT = shipped("udpflow.bpf.o")
DEFAULT_DROPS_BPF_OBJECT = shipped("drops.bpf.o")
HYBRID_CGROUP2 = Path("/sys/fs/cgroup/unified")
UNIFIED_CGROUP2 = Path("/sys/fs/cgroup")


class SettingsError(CollectorError):
    """A setting has a value the collector cannot use."""


def default_cgroup_root() -> Path:
    """The cgroup v2 mount: ``/sys/fs/cgroup/unified`` on hybrid hosts, else ``/sys/fs/cgroup``."""
    if (HYBRID_CGROUP2 / "cgroup.controllers").is_file():
        return HYBRID_CGROUP2
    return UNIFIED_CGROUP2


# The collector's producer settings over flowscope's (flowscope.kafka.PRODUCER_DEFAULTS);
# --kafka-option overrides them. Measured with bench/collector_bench.py (short connections
# on this 2-core machine, broker local, variants alternating in the same rounds): at the
# shared 20 ms the broker took 5.0% of the machine during collector phases (0.7% idle) and
# the connection rate with the collector was 85.4% of the rate without; at 100 ms the broker
# took 1.4% and the rate was 91.6% (200 ms: 90.8%, 500 ms: 90.8%: no better). Records wait
# at most 0.1 s longer; the processors' windows are seconds long and have a grace.
PRODUCER_OPTIONS: Mapping[str, str] = MappingProxyType({"linger.ms": "100"})


def _power_of_two_ring(size: int) -> str | None:
    page = mmap.PAGESIZE
    if size < page or size & (size - 1):
        return (
            f"{size} must be a power of 2 and at least one page ({page}), "
            "e.g. 1048576, 4194304, 16777216"
        )
    return None


def _cidrs(text: str) -> str | None:
    try:
        parse_cidrs(text)
    except ValueError as exc:
        return str(exc)
    return None


def _endpoints(text: str) -> str | None:
    try:
        parse_endpoints(text)
    except ValueError as exc:
        return str(exc)
    return None


def _kafka_options(items: Sequence[str]) -> Mapping[str, str]:
    return {**PRODUCER_OPTIONS, **parse_kafka_options(items)}


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = settings.bootstrap_servers()
    topic_prefix: str = settings.topic_prefix()
    node_name: str = setting(
        help="this node's name, put on every record and used as the key of host-process records",
        env="FLOWSCOPE_NODE_NAME",
        factory=socket.gethostname,
        shown="the host name",
        check=lambda name: None if name else "must not be empty",
    )
    cgroup_root: Path = setting(
        help="cgroup v2 mount whose tree names the pods",
        env="FLOWSCOPE_CGROUP_ROOT",
        factory=default_cgroup_root,
        parse=Path,
        shown=f"{HYBRID_CGROUP2} on hybrid hosts, else {UNIFIED_CGROUP2}",
    )
    bpf_object: Path = setting(
        DEFAULT_BPF_OBJECT,
        "compiled BPF object (make -C bpf builds it)",
        env="FLOWSCOPE_BPF_OBJECT",
        shown="shipped tcpconn.bpf.o",
    )
    # A connection end takes 160 bytes of ring (152-byte event, 8-byte header, measured in
    # tests/integration/collector/test_collector_restart.py), so the ring needed to ride
    # out an outage of N seconds (a stall, or a restart with pins) at R ends/s is
    # N * R * 160 bytes: 4 MiB holds 26,214 ends (26 s at 1,000 ends/s, 1.3 s at 20k
    # connections/s with both ends local) and costs 4 MiB of locked kernel memory.
    ringbuf_bytes: int = setting(
        4 << 20,
        "kernel ring buffer size, a power of 2; events that do not fit are counted as lost_ringbuf",
        env="FLOWSCOPE_COLLECTOR_RINGBUF_BYTES",
        check=_power_of_two_ring,
    )
    poll_interval_s: float = setting(
        0.1,
        "longest wait for kernel events before serving Kafka callbacks and stats",
        env="FLOWSCOPE_COLLECTOR_POLL_INTERVAL_SECONDS",
        check=positive,
    )
    max_batch: int = setting(
        8192,
        "most events decoded per ring buffer read",
        env="FLOWSCOPE_COLLECTOR_MAX_BATCH",
        check=positive,
    )
    stats_interval_s: float = setting(
        10.0,
        "seconds between counter log lines",
        env="FLOWSCOPE_COLLECTOR_STATS_INTERVAL_SECONDS",
        check=positive,
    )
    flush_timeout_s: float = setting(
        10.0,
        "how long shutdown waits for Kafka deliveries",
        env="FLOWSCOPE_COLLECTOR_FLUSH_TIMEOUT_SECONDS",
        check=positive,
    )
    tracefs: Path = setting(
        Path("/sys/kernel/tracing"), "where tracefs is (or gets) mounted", env="FLOWSCOPE_TRACEFS"
    )
    mount_tracefs: bool = setting(
        True, "mount tracefs when it is missing", env="FLOWSCOPE_COLLECTOR_MOUNT_TRACEFS"
    )
    kafka_options: Mapping[str, str] = setting(
        help="librdkafka producer setting KEY=VALUE, repeatable, over flowscope's defaults; "
        "in the variable, items separated by ';'",
        env="FLOWSCOPE_COLLECTOR_KAFKA_OPTIONS",
        factory=lambda: PRODUCER_OPTIONS,
        flag="--kafka-option",
        repeat=";",
        parse=_kafka_options,
        metavar="KEY=VALUE",
        shown="linger.ms=100",
    )
    log_level: str = settings.log_level()
    interim_interval_s: float = setting(
        30.0,
        "an open connection reports the deltas since its previous record this often "
        "(0: only when it closes)",
        env="FLOWSCOPE_COLLECTOR_INTERIM_INTERVAL_SECONDS",
        check=non_negative,
    )
    service_cidrs: str = setting(
        "",
        "comma-separated ClusterIP ranges (e.g. 10.96.0.0/12); connections to them are "
        "resolved to their backend through conntrack; empty: no lookups",
        env="FLOWSCOPE_SERVICE_CIDRS",
        check=_cidrs,
    )
    metrics_port: int = setting(
        0,
        "Prometheus /metrics port (0: no endpoint)",
        env="FLOWSCOPE_COLLECTOR_METRICS_PORT",
        check=between(0, 65535, "0 (off) or 1-65535"),
    )
    health_interval_s: float = setting(
        30.0,
        "seconds between health records on <prefix>.collector.health",
        env="FLOWSCOPE_COLLECTOR_HEALTH_INTERVAL_SECONDS",
        check=positive,
    )
    udp_interval_s: float = setting(
        30.0,
        "UDP bytes/packets per (local, remote) pair are reported per window of this "
        "length on <prefix>.raw.udp (0: no UDP program)",
        env="FLOWSCOPE_COLLECTOR_UDP_INTERVAL_SECONDS",
        check=non_negative,
    )
    udp_bpf_object: Path = setting(
        DEFAULT_UDP_BPF_OBJECT,
        "compiled UDP BPF object",
        env="FLOWSCOPE_COLLECTOR_UDP_BPF_OBJECT",
        shown="shipped udpflow.bpf.o",
    )
    drops_interval_s: float = setting(
        30.0,
        "packets the kernel dropped, per (pod or node, drop reason, addresses), are reported "
        "per window of this length on <prefix>.raw.drops (0: no drop counter)",
        env="FLOWSCOPE_COLLECTOR_DROPS_INTERVAL_SECONDS",
        check=non_negative,
    )
    drops_bpf_object: Path = setting(
        DEFAULT_DROPS_BPF_OBJECT,
        "compiled drop counter BPF object (skb:kfree_skb)",
        env="FLOWSCOPE_COLLECTOR_DROPS_BPF_OBJECT",
        shown="shipped drops.bpf.o",
    )
    # The kernel wakes the reader once this much waits (else poll_interval_s bounds the
    # delay): one wakeup and one batch per ~1,600 events instead of one per event. Every
    # batch has fixed costs (a wakeup, a Kafka message per pod, a produce request), which
    # at 64 KiB cost ~0.6 µs per event more on the bench. 0: wake on every event.
    wakeup_bytes: int = setting(
        256 << 10,
        "the kernel wakes the collector once this many bytes of events wait (it "
        "also reads every poll interval); 0: on every event, at most half the ring buffer",
        env="FLOWSCOPE_COLLECTOR_WAKEUP_BYTES",
    )
    # Records of one pod per Kafka message (a JSON array; consumers read it with
    # JsonCodec.decode_batch). 1: one JSON object per message, the form every consumer reads.
    batch_records: int = setting(
        256,
        "most records of one pod per Kafka message, as a JSON array (1: one JSON "
        "object per message; more needs consumers that read batches)",
        env="FLOWSCOPE_COLLECTOR_BATCH_RECORDS",
        check=between(1, 100_000, "1 (one record per message) to 100000"),
    )
    batch_bytes: int = setting(
        256 << 10,
        "most bytes of JSON per batch message",
        env="FLOWSCOPE_COLLECTOR_BATCH_BYTES",
        check=between(1024, 900_000, "1024 to 900000 (below Kafka's 1 MB message limit)"),
    )
    dns: dns_settings.DnsSettings = group(
        dns_settings.DnsSettings,
        prefix="dns",
        title="DNS capture",
        description="bpf/dns.bpf.o on the cgroup v2 root: one RawDnsQuery per query per "
        "local socket to <prefix>.raw.dns",
    )
    kafka_security: KafkaSecurity = PLAINTEXT  # from the --kafka-* settings
    # bpffs directory under which the TCP programs and maps of <node_name> stay pinned
    # across restarts (the DaemonSet sets /sys/fs/bpf/flowscope); None: nothing pinned,
    # the programs detach when the collector exits.
    pin_root: Path | None = setting(
        None,
        "bpffs directory where the TCP programs stay attached and their maps (open "
        "sockets, ring buffer, counters) kept across restarts, under <node>/tcpconn, e.g. "
        "/sys/fs/bpf/flowscope; empty: nothing pinned",
        env="FLOWSCOPE_COLLECTOR_PIN_ROOT",
        parse=optional_path,
    )
    uninstall: bool = setting(
        False,
        "remove this node's pins under --pin-root (the programs detach), exit",
        env="FLOWSCOPE_COLLECTOR_UNINSTALL",
    )
    # host:port of flowscope's own services besides the Kafka bootstrap servers and the
    # metrics port (which are always included), e.g. the API server the publisher watches:
    # their connections are counted apart (kernel_pipeline_*), not reported as workloads'.
    pipeline_endpoints: str = setting(
        "",
        "comma-separated host:port of flowscope's own services besides the bootstrap "
        "servers and the metrics port (e.g. the API server): their connections are counted "
        "apart, not reported",
        env="FLOWSCOPE_COLLECTOR_PIPELINE_ENDPOINTS",
        check=_endpoints,
    )

    def __post_init__(self) -> None:
        settings.check(self, SettingsError)
        half = self.ringbuf_bytes // 2
        if not 0 <= self.wakeup_bytes <= half:
            raise SettingsError(
                f"wakeup_bytes: {self.wakeup_bytes} must be between 0 and half the ring "
                f"buffer ({half})"
            )
        if not (self.cgroup_root / "cgroup.controllers").is_file():
            raise SettingsError(
                f"cgroup_root: {self.cgroup_root} is not a cgroup v2 mount (no "
                f"cgroup.controllers); valid: {HYBRID_CGROUP2} on hybrid hosts, "
                f"{UNIFIED_CGROUP2} on unified ones"
            )
        # A caller's dict must not change under us: keep a read-only copy.
        object.__setattr__(self, "kafka_options", MappingProxyType(dict(self.kafka_options)))

    @property
    def topics(self) -> Topics:
        return Topics(prefix=self.topic_prefix)

    def own_endpoints(self) -> list[tuple[str, int]]:
        """The pipeline's endpoints: bootstrap servers, extra ones, our metrics port."""
        found = parse_endpoints(self.bootstrap_servers) + parse_endpoints(self.pipeline_endpoints)
        if self.metrics_port:
            found.append(("", self.metrics_port))
        return found

    @property
    def tcp_pin_dir(self) -> Path | None:
        return None if self.pin_root is None else self.pin_root / self.node_name / "tcpconn"

    @property
    def health_topic(self) -> str:
        return Topics(self.topic_prefix).collector_health


ENV = settings.env_names(Settings)  # field -> FLOWSCOPE_* variable; the DNS group has its own


def parse_endpoints(text: str) -> list[tuple[str, int]]:
    """``"host:port,[v6]:port"`` -> [(host, port)]; a bootstrap list's own syntax."""
    found: list[tuple[str, int]] = []
    for item in text.split(","):
        item = item.strip().removeprefix("PLAINTEXT://").removeprefix("SASL_SSL://")
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item!r}: expected host:port")
        found.append((host.strip("[]"), int(port)))
    return found


def parse_kafka_options(items: Sequence[str]) -> dict[str, str]:
    """``["key=value", ...]`` -> dict, failing on an item without ``=``."""
    options: dict[str, str] = {}
    for item in items:
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"kafka option {item!r}: expected KEY=VALUE (librdkafka name)")
        options[key.strip()] = value.strip()
    return options


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m collector",
        description="flowscope node collector: loads bpf/tcpconn.bpf.o, reads one event per "
        "finished TCP connection end from the kernel, names the local pod by the socket's "
        "cgroup, and produces flowscope.records.RawTcpConnection records (JSON) to "
        "<prefix>.raw.tcp. Needs CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_PTRACE "
        "(see k8s/collector.yaml).",
    )
    settings.add_arguments(p, Settings, env)
    kafka_security.add_arguments(p, env)
    return p


def parse_settings(argv: Sequence[str] | None, env: Mapping[str, str]) -> Settings:
    """Settings from the command line over the environment. Raises SettingsError."""
    args = build_parser(env).parse_args(argv)
    try:
        security = kafka_security.from_args(args, env)
    except kafka_security.KafkaSecurityError as exc:
        raise SettingsError(str(exc)) from None
    built: Settings = settings.from_args(Settings, args, kafka_security=security)
    return built
