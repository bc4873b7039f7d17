"""The collector's settings: one frozen object, built once in ``__main__`` from the command
line, with defaults from ``FLOWSCOPE_*`` environment variables (passed in, never read here).
"""

from __future__ import annotations

import argparse
import mmap
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from collector.dns import settings as dns_settings
from collector.errors import CollectorError
from collector.nat import parse_cidrs
from flowscope import kafka_security
from flowscope.kafka_security import PLAINTEXT, KafkaSecurity
from flowscope.resources import shipped
from flowscope.topics import DEFAULT_PREFIX, Topics

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BPF_OBJECT = shipped("tcpconn.bpf.o")
DEFAULT_UDP_BPF_OBJECT = shipped("udpflow.bpf.o")
HYBRID_CGROUP2 = Path("/sys/fs/cgroup/unified")
UNIFIED_CGROUP2 = Path("/sys/fs/cgroup")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

ENV = {
    "bootstrap_servers": "FLOWSCOPE_BOOTSTRAP_SERVERS",
    "topic_prefix": "FLOWSCOPE_TOPIC_PREFIX",
    "node_name": "FLOWSCOPE_NODE_NAME",
    "cgroup_root": "FLOWSCOPE_CGROUP_ROOT",
    "bpf_object": "FLOWSCOPE_BPF_OBJECT",
    "ringbuf_bytes": "FLOWSCOPE_COLLECTOR_RINGBUF_BYTES",
    "poll_interval_s": "FLOWSCOPE_COLLECTOR_POLL_INTERVAL_S",
    "max_batch": "FLOWSCOPE_COLLECTOR_MAX_BATCH",
    "stats_interval_s": "FLOWSCOPE_COLLECTOR_STATS_INTERVAL_S",
    "flush_timeout_s": "FLOWSCOPE_COLLECTOR_FLUSH_TIMEOUT_S",
    "tracefs": "FLOWSCOPE_TRACEFS",
    "mount_tracefs": "FLOWSCOPE_COLLECTOR_MOUNT_TRACEFS",
    "kafka_options": "FLOWSCOPE_COLLECTOR_KAFKA_OPTIONS",
    "interim_interval_s": "FLOWSCOPE_COLLECTOR_INTERIM_INTERVAL_S",
    "service_cidrs": "FLOWSCOPE_SERVICE_CIDRS",
    "metrics_port": "FLOWSCOPE_COLLECTOR_METRICS_PORT",
    "health_interval_s": "FLOWSCOPE_COLLECTOR_HEALTH_INTERVAL_S",
    "udp_interval_s": "FLOWSCOPE_COLLECTOR_UDP_INTERVAL_S",
    "wakeup_bytes": "FLOWSCOPE_COLLECTOR_WAKEUP_BYTES",
    "batch_records": "FLOWSCOPE_COLLECTOR_BATCH_RECORDS",
    "batch_bytes": "FLOWSCOPE_COLLECTOR_BATCH_BYTES",
    "udp_bpf_object": "FLOWSCOPE_COLLECTOR_UDP_BPF_OBJECT",
    "log_level": "FLOWSCOPE_LOG_LEVEL",
    "pin_root": "FLOWSCOPE_COLLECTOR_PIN_ROOT",
    "uninstall": "FLOWSCOPE_COLLECTOR_UNINSTALL",
    "pipeline_endpoints": "FLOWSCOPE_COLLECTOR_PIPELINE_ENDPOINTS",
}


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


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = DEFAULT_PREFIX
    node_name: str = field(default_factory=socket.gethostname)
    cgroup_root: Path = field(default_factory=default_cgroup_root)
    bpf_object: Path = DEFAULT_BPF_OBJECT
    # A connection end takes 160 bytes of ring (152-byte event, 8-byte header, measured in
    # tests/integration/collector/test_collector_restart.py), so the ring needed to ride
    # out an outage of N seconds (a stall, or a restart with pins) at R ends/s is
    # N * R * 160 bytes: 4 MiB holds 26,214 ends (26 s at 1,000 ends/s, 1.3 s at 20k
    # connections/s with both ends local) and costs 4 MiB of locked kernel memory.
    ringbuf_bytes: int = 4 << 20
    poll_interval_s: float = 0.1  # longest wait on the ring buffer before serving Kafka
    max_batch: int = 8192  # records taken from the ring buffer per read
    stats_interval_s: float = 10.0
    flush_timeout_s: float = 10.0
    tracefs: Path = Path("/sys/kernel/tracing")
    mount_tracefs: bool = True
    kafka_options: Mapping[str, str] = field(default_factory=lambda: PRODUCER_OPTIONS)
    log_level: str = "INFO"
    interim_interval_s: float = 30.0  # open connections report deltas this often; 0: never
    service_cidrs: str = ""  # ClusterIP ranges resolved through conntrack; "": no NAT lookup
    metrics_port: int = 0  # Prometheus /metrics; 0: no endpoint
    health_interval_s: float = 30.0  # a CollectorHealth record on <prefix>.collector.health
    udp_interval_s: float = 30.0  # UDP pair windows on <prefix>.raw.udp; 0: no UDP program
    udp_bpf_object: Path = DEFAULT_UDP_BPF_OBJECT
    # The kernel wakes the reader once this much waits (else poll_interval_s bounds the
    # delay): one wakeup and one batch per ~1,600 events instead of one per event. Every
    # batch has fixed costs (a wakeup, a Kafka message per pod, a produce request), which
    # at 64 KiB cost ~0.6 µs per event more on the bench. 0: wake on every event.
    wakeup_bytes: int = 256 << 10
    # Records of one pod per Kafka message (a JSON array; consumers read it with
    # JsonCodec.decode_batch). 1: one JSON object per message, the form every consumer reads.
    batch_records: int = 256
    batch_bytes: int = 256 << 10  # a batch message is split below this (Kafka's limit: 1 MB)
    dns: dns_settings.DnsSettings = field(default_factory=dns_settings.DnsSettings)
    kafka_security: KafkaSecurity = PLAINTEXT
    # bpffs directory under which the TCP programs and maps of <node_name> stay pinned
    # across restarts (the DaemonSet sets /sys/fs/bpf/flowscope); None: nothing pinned,
    # the programs detach when the collector exits.
    pin_root: Path | None = None
    uninstall: bool = False  # remove this node's pins and exit
    # host:port of flowscope's own services besides the Kafka bootstrap servers and the
    # metrics port (which are always included), e.g. the API server the publisher watches:
    # their connections are counted apart (kernel_pipeline_*), not reported as workloads'.
    pipeline_endpoints: str = ""

    def __post_init__(self) -> None:
        page = mmap.PAGESIZE
        size = self.ringbuf_bytes
        if size < page or size & (size - 1):
            raise SettingsError(
                f"ringbuf_bytes: {size} must be a power of 2 and at least one page ({page}), "
                "e.g. 1048576, 4194304, 16777216"
            )
        if not 0 <= self.wakeup_bytes <= size // 2:
            raise SettingsError(
                f"wakeup_bytes: {self.wakeup_bytes} must be between 0 and half the ring "
                f"buffer ({size // 2})"
            )
        if self.udp_interval_s < 0:
            raise SettingsError(
                f"udp_interval_s: must be >= 0 (0 disables), got {self.udp_interval_s}"
            )
        if self.interim_interval_s < 0:
            raise SettingsError(
                f"interim_interval_s: must be >= 0 (0 disables), got {self.interim_interval_s}"
            )
        if not 0 <= self.metrics_port <= 65535:
            raise SettingsError(f"metrics_port: 0 (off) or 1-65535, got {self.metrics_port}")
        try:
            parse_cidrs(self.service_cidrs)
        except ValueError as exc:
            raise SettingsError(f"service_cidrs: {exc}") from None
        for name in ("poll_interval_s", "stats_interval_s", "flush_timeout_s",
                     "health_interval_s"):  # fmt: skip
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name}: must be > 0, got {getattr(self, name)}")
        if not 1 <= self.batch_records <= 100_000:
            raise SettingsError(
                f"batch_records: 1 (one record per message) to 100000, got {self.batch_records}"
            )
        if not 1024 <= self.batch_bytes <= 900_000:
            raise SettingsError(
                f"batch_bytes: 1024 to 900000 (below Kafka's 1 MB message limit), "
                f"got {self.batch_bytes}"
            )
        if self.max_batch <= 0:
            raise SettingsError(f"max_batch: must be > 0, got {self.max_batch}")
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(f"log_level: {self.log_level!r}, valid: {', '.join(LOG_LEVELS)}")
        try:
            parse_endpoints(self.pipeline_endpoints)
        except ValueError as exc:
            raise SettingsError(f"pipeline_endpoints: {exc}") from None
        if not self.node_name:
            raise SettingsError("node_name: must not be empty")
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


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}: valid values are true/false, 1/0, yes/no")


def _number(kind: type[int] | type[float], what: str) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what}: {text!r} is not a number") from None

    return parse


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    d = Settings.__dataclass_fields__

    def default(name: str) -> object:
        if ENV[name] in env:
            return env[ENV[name]]
        spec = d[name]
        return spec.default_factory() if callable(spec.default_factory) else spec.default

    def env_help(name: str, text: str) -> str:
        return f"{text} (env {ENV[name]}; default %(default)s)"

    p = argparse.ArgumentParser(
        prog="python -m collector",
        description="flowscope node collector: loads bpf/tcpconn.bpf.o, reads one event per "
        "finished TCP connection end from the kernel, names the local pod by the socket's "
        "cgroup, and produces flowscope.records.RawTcpConnection records (JSON) to "
        "<prefix>.raw.tcp. Needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN).",
    )
    p.add_argument(
        "--bootstrap-servers",
        default=default("bootstrap_servers"),
        help=env_help("bootstrap_servers", "Kafka bootstrap servers"),
    )
    p.add_argument(
        "--topic-prefix",
        default=default("topic_prefix"),
        help=env_help("topic_prefix", "prefix of every topic; records go to <prefix>.raw.tcp"),
    )
    p.add_argument(
        "--node-name",
        default=default("node_name"),
        help=env_help(
            "node_name",
            "this node's name, put on every record and used as the key of host-process records",
        ),
    )
    p.add_argument(
        "--cgroup-root",
        type=Path,
        default=default("cgroup_root"),
        help=env_help("cgroup_root", "cgroup v2 mount whose tree names the pods"),
    )
    p.add_argument(
        "--bpf-object",
        type=Path,
        default=default("bpf_object"),
        help=env_help("bpf_object", "compiled BPF object (make -C bpf builds it)"),
    )
    p.add_argument(
        "--ringbuf-bytes",
        type=_number(int, "--ringbuf-bytes"),
        default=default("ringbuf_bytes"),
        help=env_help(
            "ringbuf_bytes",
            "kernel ring buffer size, a power of 2; "
            "events that do not fit are counted as lost_ringbuf",
        ),
    )
    p.add_argument(
        "--poll-interval-s",
        type=_number(float, "--poll-interval-s"),
        default=default("poll_interval_s"),
        help=env_help(
            "poll_interval_s",
            "longest wait for kernel events before serving Kafka callbacks and stats",
        ),
    )
    p.add_argument(
        "--max-batch",
        type=_number(int, "--max-batch"),
        default=default("max_batch"),
        help=env_help("max_batch", "most events decoded per ring buffer read"),
    )
    p.add_argument(
        "--stats-interval-s",
        type=_number(float, "--stats-interval-s"),
        default=default("stats_interval_s"),
        help=env_help("stats_interval_s", "seconds between counter log lines"),
    )
    p.add_argument(
        "--flush-timeout-s",
        type=_number(float, "--flush-timeout-s"),
        default=default("flush_timeout_s"),
        help=env_help("flush_timeout_s", "how long shutdown waits for Kafka deliveries"),
    )
    p.add_argument(
        "--tracefs",
        type=Path,
        default=default("tracefs"),
        help=env_help("tracefs", "where tracefs is (or gets) mounted"),
    )
    p.add_argument(
        "--mount-tracefs",
        type=_bool,
        default=default("mount_tracefs"),
        help=env_help("mount_tracefs", "mount tracefs when it is missing (true/false)"),
    )
    p.add_argument(
        "--kafka-option",
        dest="kafka_option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"librdkafka producer setting, repeatable, applied over flowscope's "
        f"defaults and the collector's linger.ms=100 "
        f"(env {ENV['kafka_options']}: KEY=VALUE items separated by ';')",
    )
    p.add_argument(
        "--interim-interval-s",
        type=_number(float, "--interim-interval-s"),
        default=default("interim_interval_s"),
        help=env_help(
            "interim_interval_s",
            "an open connection reports the deltas since its previous record this often "
            "(0: only when it closes)",
        ),
    )
    p.add_argument(
        "--service-cidrs",
        default=default("service_cidrs"),
        help=env_help(
            "service_cidrs",
            "comma-separated ClusterIP ranges (e.g. 10.96.0.0/12); connections to them are "
            "resolved to their backend through conntrack; empty: no lookups",
        ),
    )
    p.add_argument(
        "--metrics-port",
        type=_number(int, "--metrics-port"),
        default=default("metrics_port"),
        help=env_help("metrics_port", "Prometheus /metrics port (0: no endpoint)"),
    )
    p.add_argument(
        "--health-interval-s",
        type=_number(float, "--health-interval-s"),
        default=default("health_interval_s"),
        help=env_help(
            "health_interval_s", "seconds between health records on <prefix>.collector.health"
        ),
    )
    p.add_argument(
        "--wakeup-bytes",
        type=_number(int, "--wakeup-bytes"),
        default=default("wakeup_bytes"),
        help=env_help(
            "wakeup_bytes",
            "the kernel wakes the collector once this many bytes of events wait (it also "
            "reads every poll interval); 0: on every event",
        ),
    )
    p.add_argument(
        "--batch-records",
        type=_number(int, "--batch-records"),
        default=default("batch_records"),
        help=env_help(
            "batch_records",
            "most records of one pod per Kafka message, as a JSON array (1: one JSON object "
            "per message; more needs consumers that read batches)",
        ),
    )
    p.add_argument(
        "--batch-bytes",
        type=_number(int, "--batch-bytes"),
        default=default("batch_bytes"),
        help=env_help("batch_bytes", "most bytes of JSON per batch message"),
    )
    p.add_argument(
        "--udp-interval-s",
        type=_number(float, "--udp-interval-s"),
        default=default("udp_interval_s"),
        help=env_help(
            "udp_interval_s",
            "UDP bytes/packets per (local, remote) pair are reported per window of this "
            "length on <prefix>.raw.udp (0: no UDP program)",
        ),
    )
    p.add_argument(
        "--udp-bpf-object",
        type=Path,
        default=default("udp_bpf_object"),
        help=env_help("udp_bpf_object", "compiled UDP BPF object (make -C bpf builds it)"),
    )
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=default("log_level"),
        help=env_help("log_level", "log level"),
    )
    p.add_argument(
        "--pin-root",
        type=lambda text: Path(text) if text else None,
        default=default("pin_root"),
        help=env_help(
            "pin_root",
            "bpffs directory where the TCP programs stay attached and their maps (open "
            "sockets, ring buffer, counters) kept across restarts, under <node>/tcpconn, "
            "e.g. /sys/fs/bpf/flowscope; empty: nothing pinned",
        ),
    )
    p.add_argument(
        "--pipeline-endpoints",
        default=default("pipeline_endpoints"),
        help=env_help(
            "pipeline_endpoints",
            "comma-separated host:port of flowscope's own services besides the bootstrap "
            "servers and the metrics port (e.g. the API server): their connections are "
            "counted apart, not reported",
        ),
    )
    p.add_argument(
        "--uninstall",
        type=_bool,
        nargs="?",
        const=True,
        default=default("uninstall"),
        help=env_help(
            "uninstall", "remove this node's pins under --pin-root (the programs detach), exit"
        ),
    )
    dns_settings.add_arguments(p, env)
    kafka_security.add_arguments(p, env)
    return p


def parse_settings(argv: Sequence[str] | None, env: Mapping[str, str]) -> Settings:
    """Settings from the command line over the environment. Raises SettingsError."""
    args = build_parser(env).parse_args(argv)
    options = dict(PRODUCER_OPTIONS)
    options.update(parse_kafka_options(env.get(ENV["kafka_options"], "").split(";")))
    options.update(parse_kafka_options(args.kafka_option))
    values = {k: v for k, v in vars(args).items() if k in Settings.__dataclass_fields__}
    values["kafka_options"] = options
    values["dns"] = dns_settings.from_args(args)
    try:
        values["kafka_security"] = kafka_security.from_args(args, env)
    except kafka_security.KafkaSecurityError as exc:
        raise SettingsError(str(exc)) from None
    return Settings(**values)
