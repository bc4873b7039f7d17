"""The processors' settings: one frozen object, built once in ``__main__``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from flowscope import settings
from flowscope.kafka_security import PLAINTEXT, KafkaSecurity
from flowscope.resources import shipped
from flowscope.settings import LOG_LEVELS, optional_str, setting
from processors import ProcessorsError
from processors.cost.prices import CLOUDS
from processors.dns.aggregate import NAME_GROUPINGS

DEFAULT_PRICES = shipped("prices.yaml")
DEFAULT_ALERT_RULES = shipped("alerts.yaml")
_APP_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


class SettingsError(ProcessorsError, ValueError):
    """A setting has an invalid value; the message names the valid ones."""


@dataclass(frozen=True)
class ProcessorSettings:
    bootstrap_servers: str = settings.bootstrap_servers()
    topic_prefix: str = settings.topic_prefix()
    window_s: float = setting(
        10.0,
        "tumbling window length in seconds (event time = connection end)",
        env="FLOWSCOPE_PROCESSORS_WINDOW_SECONDS",
    )
    grace_s: float = setting(
        5.0,
        "a window is published when the watermark passes its end + grace",
        env="FLOWSCOPE_PROCESSORS_GRACE_SECONDS",
    )
    # How far the watermark may trail wall-clock time when the stream is quiet or uniformly
    # behind (see processors.core.windows.PartitionWatermark).
    idle_allowance_s: float = setting(
        10.0,
        "the watermark is max(newest event time, now - this): how long a quiet stream, "
        "or input not in Kafka yet, holds windows open (records not read yet always do)",
        env="FLOWSCOPE_PROCESSORS_IDLE_ALLOWANCE_SECONDS",
    )
    # Also the Kafka consumer group: workers with the same id share the partitions.
    app_id: str = setting(
        "flowscope-tcp-pairs",
        "Kafka consumer group, also the faust app id",
        env="FLOWSCOPE_PROCESSORS_GROUP",
        flag="--group",
    )
    # 0 disables faust's web server (several workers share one machine)
    web_port: int = setting(
        0, "faust web server port on 127.0.0.1; 0 disables it", env="FLOWSCOPE_PROCESSORS_WEB_PORT"
    )
    metrics_port: int = setting(
        0,
        "Prometheus /metrics port of the worker's counters; 0 disables it",
        env="FLOWSCOPE_PROCESSORS_METRICS_PORT",
    )
    state_dir: Path = setting(
        Path(".state"),
        "state directory; faust's data dir is <state-dir>/processors/<group>",
        env="FLOWSCOPE_STATE_DIR",
    )
    close_interval_s: float = setting(
        1.0,
        "how often ready windows are closed and published",
        env="FLOWSCOPE_PROCESSORS_CLOSE_INTERVAL_SECONDS",
    )
    log_interval_s: float = setting(
        10.0, "how often the counters are logged", env="FLOWSCOPE_PROCESSORS_LOG_INTERVAL_SECONDS"
    )
    sketch_alpha: float = setting(
        0.01, "relative accuracy of the latency sketch", env="FLOWSCOPE_PROCESSORS_SKETCH_ALPHA"
    )
    # After SIGTERM/SIGINT, exit hard if faust has not stopped by then (see app._Worker).
    shutdown_timeout_s: float = setting(
        15.0,
        "after SIGTERM, exit hard (code 1) if faust has not stopped within this time",
        env="FLOWSCOPE_PROCESSORS_SHUTDOWN_TIMEOUT_SECONDS",
    )
    log_level: str = settings.log_level()
    # The price table (config/prices.yaml) and which cloud's prices apply (None: the file's).
    prices_path: Path = setting(
        DEFAULT_PRICES,
        "data-transfer price table (USD per GB, per cloud and path class)",
        env="FLOWSCOPE_PROCESSORS_PRICES",
        flag="--prices",
        shown="shipped prices.yaml",
    )
    cloud: str | None = setting(
        None,
        f"price table to use: {', '.join(CLOUDS)}; none: the file's `cloud`",
        env="FLOWSCOPE_PROCESSORS_CLOUD",
        parse=optional_str,
    )
    alert_rules_path: Path = setting(
        DEFAULT_ALERT_RULES,
        "alert rules YAML",
        env="FLOWSCOPE_PROCESSORS_ALERT_RULES",
        flag="--alert-rules",
        shown="shipped alerts.yaml",
    )
    # Consumer group session: how soon a killed worker's partitions go to the others.
    session_timeout_s: float = setting(
        10.0,
        "consumer group session timeout: how soon a dead worker's partitions move",
        env="FLOWSCOPE_PROCESSORS_SESSION_TIMEOUT_SECONDS",
    )
    # DNS (processors/dns/). A query's record leaves the collector when it is answered or
    # timed out (5 s by default), up to that long after its event time (the query): the DNS
    # grace must be longer than the collector's DNS timeout or timed-out queries are late.
    dns_grace_s: float = setting(
        10.0,
        "DNS windows (event time = query) are published at their end + this; keep it "
        "above the collector's DNS timeout",
        env="FLOWSCOPE_PROCESSORS_DNS_GRACE_SECONDS",
    )
    # Path health (processors/path/health.py) joins the kernel's drops, reported once per
    # collector drops interval (30 s by default) for the interval before: a path window waits
    # that long, or the drops between its connections arrive after it is published.
    path_grace_s: float = setting(
        40.0,
        "path health windows are published at their end + this; keep it above the collector's "
        "drops interval",
        env="FLOWSCOPE_PROCESSORS_PATH_GRACE_SECONDS",
    )
    dns_name_group: str = setting(
        "suffix",
        "DNS query name grouping: suffix (last labels of the asked name), asked, name, none",
        env="FLOWSCOPE_PROCESSORS_DNS_NAME_GROUP",
    )
    dns_name_labels: int = setting(
        2, "labels kept by --dns-name-group suffix", env="FLOWSCOPE_PROCESSORS_DNS_NAME_LABELS"
    )
    dns_cluster_domain: str = setting(
        "cluster.local",
        "cluster domain: <svc>.<ns>.svc.<domain> names are grouped per service",
        env="FLOWSCOPE_PROCESSORS_DNS_CLUSTER_DOMAIN",
    )
    broker_wait_s: float = setting(
        30.0, "how long to wait for the broker at start", env="FLOWSCOPE_BROKER_WAIT_SECONDS"
    )
    kafka_security: KafkaSecurity = PLAINTEXT  # from the --kafka-* settings

    def __post_init__(self) -> None:
        if not self.bootstrap_servers.strip():
            raise SettingsError("bootstrap servers must be host:port[,host:port...]")
        if not self.topic_prefix or not _APP_ID.match(self.topic_prefix):
            raise SettingsError(
                f"topic prefix {self.topic_prefix!r}: use letters, digits, '.', '_' or '-'"
            )
        if not _APP_ID.match(self.app_id):
            raise SettingsError(f"app id {self.app_id!r}: use letters, digits, '.', '_' or '-'")
        if not self.window_s > 0:
            raise SettingsError(f"window must be > 0 seconds, got {self.window_s}")
        if not self.grace_s >= 0:
            raise SettingsError(f"grace must be >= 0 seconds, got {self.grace_s}")
        if not self.idle_allowance_s >= 0:
            raise SettingsError(f"idle allowance must be >= 0 seconds, got {self.idle_allowance_s}")
        if not 0 <= self.web_port <= 65535:
            raise SettingsError(f"web port must be 0 (disabled) or 1-65535, got {self.web_port}")
        if not 0 <= self.metrics_port <= 65535:
            raise SettingsError(f"metrics port must be 0 (off) or 1-65535, got {self.metrics_port}")
        if not self.close_interval_s > 0 or not self.log_interval_s > 0:
            raise SettingsError("close and log intervals must be > 0 seconds")
        if not self.shutdown_timeout_s > 0:
            raise SettingsError(f"shutdown timeout must be > 0 s, got {self.shutdown_timeout_s}")
        if not 0 < self.sketch_alpha < 1:
            raise SettingsError(f"sketch alpha must be in (0, 1), got {self.sketch_alpha}")
        if self.cloud is not None and self.cloud not in CLOUDS:
            raise SettingsError(f"cloud {self.cloud!r} is not one of {', '.join(CLOUDS)}")
        if not 6 <= self.session_timeout_s <= 300:
            raise SettingsError(f"session timeout must be 6-300 s, got {self.session_timeout_s}")
        if not self.dns_grace_s >= 0:
            raise SettingsError(f"DNS grace must be >= 0 seconds, got {self.dns_grace_s}")
        if not self.path_grace_s >= 0:
            raise SettingsError(f"path grace must be >= 0 seconds, got {self.path_grace_s}")
        if self.dns_name_group not in NAME_GROUPINGS:
            raise SettingsError(
                f"DNS name group {self.dns_name_group!r} is not one of {', '.join(NAME_GROUPINGS)}"
            )
        if self.dns_name_labels < 1:
            raise SettingsError(f"DNS name labels must be >= 1, got {self.dns_name_labels}")
        if not self.dns_cluster_domain.strip(".") or " " in self.dns_cluster_domain:
            raise SettingsError(
                f"DNS cluster domain {self.dns_cluster_domain!r}: e.g. cluster.local"
            )
        if self.log_level not in LOG_LEVELS:
            raise SettingsError(
                f"log level {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}"
            )

    @property
    def window_ns(self) -> int:
        return round(self.window_s * 1e9)

    @property
    def grace_ns(self) -> int:
        return round(self.grace_s * 1e9)

    @property
    def dns_grace_ns(self) -> int:
        return round(self.dns_grace_s * 1e9)

    @property
    def path_grace_ns(self) -> int:
        return round(self.path_grace_s * 1e9)

    @property
    def idle_allowance_ns(self) -> int:
        return round(self.idle_allowance_s * 1e9)

    @property
    def data_dir(self) -> Path:
        """faust's data dir; one per app id so that workers on one machine never collide."""
        return self.state_dir / "processors" / self.app_id


ENV = settings.env_names(ProcessorSettings)
