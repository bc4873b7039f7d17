"""The DNS part of the collector's settings: one option group of ``python -m collector``
(``--dns-*``), nested in :class:`collector.settings.Settings` as ``dns``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from collector.dns.privacy import NAME_POLICIES, NamePolicy
from collector.errors import CollectorError
from flowscope import settings
from flowscope.resources import shipped
from flowscope.settings import between, one_of, positive, setting

DEFAULT_DNS_BPF_OBJECT = shipped("dns.bpf.o")


class DnsSettingsError(CollectorError):
    """A DNS setting has a value the collector cannot use."""


def _ring(size: int) -> str | None:
    if size < 4096 or size & (size - 1):
        return f"{size} must be a power of 2 of at least 4096, e.g. 1048576, 4194304"
    return None


@dataclass(frozen=True)
class DnsSettings:
    enabled: bool = setting(False, "capture DNS", env="FLOWSCOPE_DNS_ENABLED")
    bpf_object: Path = setting(
        DEFAULT_DNS_BPF_OBJECT,
        "compiled DNS BPF object",
        env="FLOWSCOPE_DNS_BPF_OBJECT",
        shown="shipped dns.bpf.o",
    )
    # 4 MiB holds ~7,000 packets of 600 bytes: 0.35 s of 5,000 queries/s seen at both ends
    # (four packets each) if the loop stalls.
    ringbuf_bytes: int = setting(
        4 << 20,
        "DNS ring buffer size, a power of 2",
        env="FLOWSCOPE_DNS_RINGBUF_BYTES",
        check=_ring,
    )
    port: int = setting(
        53,
        "the DNS port captured (UDP and TCP)",
        env="FLOWSCOPE_DNS_PORT",
        check=between(1, 65535, "1-65535"),
    )
    # glibc's default per-try timeout
    timeout_s: float = setting(
        5.0,
        "a query unanswered this long is a timeout",
        env="FLOWSCOPE_DNS_TIMEOUT_SECONDS",
        check=positive,
    )
    query_names: NamePolicy = setting(
        "plain",
        "query names in records: plain, hash (keyed BLAKE2b, 32 hex digits) or drop",
        env="FLOWSCOPE_DNS_QUERY_NAMES",
        choices=NAME_POLICIES,
        check=one_of(NAME_POLICIES),
    )
    name_hash_key: str = setting(
        "",
        "secret key for --dns-query-names hash, at most 64 bytes",
        env="FLOWSCOPE_DNS_NAME_HASH_KEY",
        secret=True,
        check=lambda key: "at most 64 bytes" if len(key.encode()) > 64 else None,
    )
    mark_search: bool = setting(
        True,
        "mark search-path (ndots) expansions from each pod's resolv.conf",
        env="FLOWSCOPE_DNS_MARK_SEARCH",
    )

    def __post_init__(self) -> None:
        settings.check(self, lambda problem: DnsSettingsError(f"dns_{problem}"))


ENV = settings.env_names(DnsSettings)
