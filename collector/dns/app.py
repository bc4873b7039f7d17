"""Wire DNS capture into the collector: one call from ``collector/__main__.py``."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from collector.dns.pipeline import DnsPipeline, Sink
from collector.dns.privacy import NamePrivacy
from collector.dns.resolvconf import ResolvConfReader
from collector.dns.search import SearchTracker
from collector.dns.settings import DnsSettings
from collector.dns.source import DnsSource
from collector.node.attribution import CgroupResolver
from collector.node.nat import NatResolver

log = logging.getLogger("collector.dns")


def start_dns(
    stack: contextlib.ExitStack,
    settings: DnsSettings,
    cgroup_root: Path,
    resolver: CgroupResolver,
    sink: Sink,
    topic: str,
    node_name: str,
    nat: NatResolver | None = None,
) -> DnsPipeline | None:
    """Load and attach the DNS program (closed with ``stack``) and build its pipeline; None
    when DNS capture is disabled. Call ``tick()`` every loop turn, ``shutdown()`` at the end,
    before the producer is flushed."""
    if not settings.enabled:
        return None
    source = stack.enter_context(
        DnsSource(settings.bpf_object, cgroup_root, settings.ringbuf_bytes, settings.port)
    )
    search: SearchTracker | None = None
    if settings.mark_search:
        search = SearchTracker(
            ResolvConfReader(cgroup_root, lambda c: resolver.resolve(c).path),
            hold_s=settings.timeout_s,
        )
    pipeline = DnsPipeline(
        source,
        sink,
        resolver,
        node_name,
        topic,
        NamePrivacy(settings.query_names, settings.name_hash_key.encode()),
        timeout_s=settings.timeout_s,
        search=search,
        nat=nat,
    )
    log.info(
        "DNS capture on: producing to %s (timeout %.1fs, query names %s)",
        topic,
        settings.timeout_s,
        settings.query_names,
    )
    return pipeline
