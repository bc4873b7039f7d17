"""Kafka topic names. One prefix setting moves every topic (tests use a random prefix)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "flowscope"


@dataclass(frozen=True)
class Topics:
    """All topic names of one flowscope deployment."""

    prefix: str = DEFAULT_PREFIX

    @property
    def raw_tcp(self) -> str:
        """Collector -> enricher: one record per finished TCP connection end."""
        return f"{self.prefix}.raw.tcp"

    @property
    def metadata(self) -> str:
        """Metadata publisher -> enricher: compacted, one key per Kubernetes object."""
        return f"{self.prefix}.k8s.metadata"

    @property
    def enriched_tcp(self) -> str:
        """Enricher -> processors and data lake: one record per connection end, both ends named."""
        return f"{self.prefix}.enriched.tcp"

    @property
    def metrics_tcp_pairs(self) -> str:
        """Processor output: one record per (client workload, server workload, window)."""
        return f"{self.prefix}.metrics.tcp.pairs"

    @property
    def deadletter(self) -> str:
        """Records any stage could not handle, with the reason. Never silently dropped."""
        return f"{self.prefix}.deadletter"
