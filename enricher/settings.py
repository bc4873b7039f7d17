"""The enricher's settings: one frozen object, built once in ``__main__``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flowscope.topics import DEFAULT_PREFIX, Topics


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = DEFAULT_PREFIX
    consumer_group: str = "flowscope-enricher"
    metadata_file: Path | None = None  # publish only
    prune: bool = True  # publish: tombstone keys the file no longer has
    stats_interval_s: float = 10.0
    batch_size: int = 2000  # raw records per consume() call
    poll_timeout_s: float = 0.2
    # How long a deleted pod still names its IP (records from collectors arrive late).
    deleted_pod_grace_s: float = 300.0
    metadata_load_timeout_s: float = 60.0

    @property
    def topics(self) -> Topics:
        return Topics(prefix=self.topic_prefix)
