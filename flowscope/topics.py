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
    def raw_udp(self) -> str:
        """Collector -> enricher: UDP bytes/packets per (local, remote) pair per window."""
        return f"{self.prefix}.raw.udp"

    @property
    def raw_dns(self) -> str:
        """Collector -> enricher: one record per DNS query per observing socket."""
        return f"{self.prefix}.raw.dns"

    @property
    def raw_drops(self) -> str:
        """Collector -> processors: kernel packet drops per (pod or netns, reason) per window."""
        return f"{self.prefix}.raw.drops"

    @property
    def metrics_path_health(self) -> str:
        """Processor output: network health per (node pair | zone pair, window, partition)."""
        return f"{self.prefix}.metrics.path.health"

    @property
    def metadata(self) -> str:
        """Metadata publisher -> enricher: compacted, one key per Kubernetes object."""
        return f"{self.prefix}.k8s.metadata"

    @property
    def enriched_tcp(self) -> str:
        """Enricher -> processors and data lake: one record per connection end, both ends named."""
        return f"{self.prefix}.enriched.tcp"

    @property
    def enriched_dns(self) -> str:
        """Enricher -> processors and data lake: one record per DNS query per observing end."""
        return f"{self.prefix}.enriched.dns"

    @property
    def enriched_udp(self) -> str:
        """Enricher -> processors and data lake: UDP volume per flow per window, both ends named."""
        return f"{self.prefix}.enriched.udp"

    @property
    def metrics_dns(self) -> str:
        """Processor output: per (client workload, DNS server, name group, window, partition)."""
        return f"{self.prefix}.metrics.dns"

    @property
    def metrics_tcp_pairs(self) -> str:
        """Processor output: one record per (client workload, server workload, window)."""
        return f"{self.prefix}.metrics.tcp.pairs"

    @property
    def metrics_tcp_latency(self) -> str:
        """Processor output: per (client workload, server workload, service, window, partition)."""
        return f"{self.prefix}.metrics.tcp.latency"

    @property
    def metrics_cost_pairs(self) -> str:
        """Processor output: bytes and dollars per workload and zone pair, window, partition."""
        return f"{self.prefix}.metrics.cost.pairs"

    @property
    def metrics_cost_rollups(self) -> str:
        """Processor output: bytes and dollars per workload and per namespace, per window."""
        return f"{self.prefix}.metrics.cost.rollups"

    @property
    def alerts(self) -> str:
        """Alert rule events: firing and resolved, one episode id per rule and group."""
        return f"{self.prefix}.alerts"

    @property
    def deadletter(self) -> str:
        """Records any stage could not handle, with the reason. Never silently dropped."""
        return f"{self.prefix}.deadletter"

    @property
    def collector_health(self) -> str:
        """Each collector's counters, periodically (flowscope.records.CollectorHealth)."""
        return f"{self.prefix}.collector.health"
