"""The DNS part of the collector's settings, added to ``python -m collector``'s command line.

Kept here so that DNS capture is one isolated option group: ``collector/settings.py`` only
embeds :class:`DnsSettings` and calls :func:`add_arguments` / :func:`from_args`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from collector.dns.privacy import NAME_POLICIES, NamePolicy
from collector.errors import CollectorError
from flowscope.resources import shipped

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_DNS_BPF_OBJECT = shipped("dns.bpf.o")

ENV = {
    "enabled": "FLOWSCOPE_DNS_ENABLED",
    "bpf_object": "FLOWSCOPE_DNS_BPF_OBJECT",
    "ringbuf_bytes": "FLOWSCOPE_DNS_RINGBUF_BYTES",
    "port": "FLOWSCOPE_DNS_PORT",
    "timeout_s": "FLOWSCOPE_DNS_TIMEOUT_S",
    "query_names": "FLOWSCOPE_DNS_QUERY_NAMES",
    "name_hash_key": "FLOWSCOPE_DNS_NAME_HASH_KEY",
    "mark_search": "FLOWSCOPE_DNS_MARK_SEARCH",
}


class DnsSettingsError(CollectorError):
    """A DNS setting has a value the collector cannot use."""


@dataclass(frozen=True)
class DnsSettings:
    enabled: bool = False
    bpf_object: Path = DEFAULT_DNS_BPF_OBJECT
    # 4 MiB holds ~7,000 packets of 600 bytes: 0.35 s of 5,000 queries/s seen at both ends
    # (four packets each) if the loop stalls.
    ringbuf_bytes: int = 4 << 20
    port: int = 53
    timeout_s: float = 5.0  # glibc's default per-try timeout
    query_names: NamePolicy = "plain"
    name_hash_key: str = field(default="", repr=False)
    mark_search: bool = True  # read each client pod's resolv.conf to mark ndots expansions

    def __post_init__(self) -> None:
        size = self.ringbuf_bytes
        if size < 4096 or size & (size - 1):
            raise DnsSettingsError(
                f"dns_ringbuf_bytes: {size} must be a power of 2 of at least 4096, "
                "e.g. 1048576, 4194304"
            )
        if not 0 < self.port < 65536:
            raise DnsSettingsError(f"dns_port: 1-65535, got {self.port}")
        if self.timeout_s <= 0:
            raise DnsSettingsError(f"dns_timeout_s: must be > 0, got {self.timeout_s}")
        if self.query_names not in NAME_POLICIES:
            raise DnsSettingsError(
                f"dns_query_names: {self.query_names!r}, valid: {', '.join(NAME_POLICIES)}"
            )
        if len(self.name_hash_key.encode()) > 64:
            raise DnsSettingsError("dns_name_hash_key: at most 64 bytes")


def _bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}: valid values are true/false, 1/0, yes/no")


def add_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    d = DnsSettings()

    def default(name: str) -> object:
        return env.get(ENV[name], getattr(d, name))

    def h(name: str, text: str) -> str:
        return f"{text} (env {ENV[name]}; default %(default)s)"

    g = parser.add_argument_group(
        "DNS capture",
        "bpf/dns.bpf.o on the cgroup v2 root: one RawDnsQuery per query per local socket "
        "to <prefix>.raw.dns",
    )
    g.add_argument("--dns-enabled", type=_bool, default=default("enabled"),
                   help=h("enabled", "capture DNS (true/false)"))
    g.add_argument("--dns-bpf-object", type=Path, default=default("bpf_object"),
                   help=h("bpf_object", "compiled DNS BPF object"))
    g.add_argument("--dns-ringbuf-bytes", type=int, default=default("ringbuf_bytes"),
                   help=h("ringbuf_bytes", "DNS ring buffer size, a power of 2"))
    g.add_argument("--dns-port", type=int, default=default("port"),
                   help=h("port", "the DNS port captured (UDP and TCP)"))
    g.add_argument("--dns-timeout-s", type=float, default=default("timeout_s"),
                   help=h("timeout_s", "a query unanswered this long is a timeout"))
    g.add_argument("--dns-query-names", choices=NAME_POLICIES, default=default("query_names"),
                   help=h("query_names", "query names in records: plain, hash (keyed "
                          "BLAKE2b, 32 hex digits) or drop"))
    g.add_argument("--dns-name-hash-key", default=default("name_hash_key"),
                   help=f"secret key for --dns-query-names hash (env {ENV['name_hash_key']})")
    g.add_argument("--dns-mark-search", type=_bool, default=default("mark_search"),
                   help=h("mark_search", "mark search-path (ndots) expansions from each "
                          "pod's resolv.conf"))  # fmt: skip


def from_args(args: argparse.Namespace) -> DnsSettings:
    try:
        return DnsSettings(
            enabled=_bool(args.dns_enabled),
            bpf_object=Path(args.dns_bpf_object),
            ringbuf_bytes=int(args.dns_ringbuf_bytes),
            port=int(args.dns_port),
            timeout_s=float(args.dns_timeout_s),
            query_names=args.dns_query_names,
            name_hash_key=args.dns_name_hash_key,
            mark_search=_bool(args.dns_mark_search),
        )
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise DnsSettingsError(f"DNS settings: {exc}") from None
