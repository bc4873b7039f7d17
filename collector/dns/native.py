"""The C DNS path (``collector/dns/_native.c``) behind the interface the pipeline uses.

:class:`NativeMatcher` does in one C call per batch what abi.decode_batch, the pipeline's TCP
framing, parser.parse, Matcher.observe and record.build_record do per packet in Python, and
returns each finished query as (partition key, RawDnsQuery JSON). With search marking, each
client result is settled with the tracker (a light summary and its encoded pair): the pairs it
holds leave the engine's output and come back through :meth:`NativeMatcher.remark` when the
tracker releases them, re-encoded only if their mark changed. The Python modules stay the
spec: tests/unit/collector/test_dns_native.py feeds both the same hostile input and compares
the records and every counter. ``native_available()`` is False where the extension was not
built (``make native``); the pipeline then runs the Python path.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

import msgspec

from collector.dns.matcher import EXPIRED_MEMORY, MatcherStats
from collector.dns.privacy import NamePrivacy
from collector.dns.record import record_key
from collector.dns.search import Mark, SearchTracker
from collector.kernel.ringbuf import RecordBatch
from collector.node.attribution import CgroupResolver
from flowscope.codec import JsonCodec
from flowscope.records import RawDnsQuery

try:
    from collector.dns import _native
except ImportError:  # not built: the pipeline falls back to the Python path
    _native = None  # type: ignore[assignment]

# (family 4/6, IP protocol, local addr, local port, remote addr, remote port) -> backend
BackendOf = Callable[[int, int, str, int, str, int], tuple[str, int] | None]
Pairs = list[tuple[str, bytes]]

_json = msgspec.json.encode
assert EXPIRED_MEMORY == 16384  # the C engine remembers as many expired keys


def native_available() -> bool:
    return _native is not None


def _v6_text(raw: bytes) -> str:
    return str(ipaddress.IPv6Address(raw))


class NativeMatcher:
    """Matcher-shaped (``stats``, ``len``, ``expire``, ``flush``) around the C engine; its
    results are records already encoded, with their keys."""

    def __init__(
        self,
        resolver: CgroupResolver,
        node_name: str,
        privacy: NamePrivacy,
        timeout_s: float,
        search: SearchTracker | None,
        backend_of: BackendOf | None,
        max_pending: int = 65536,
    ) -> None:
        if _native is None:
            raise ImportError("collector.dns._native is not built (make native)")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self._resolver = resolver
        self._node = node_name
        self._privacy = privacy
        self._codec = JsonCodec(RawDnsQuery)

        def cgroup(cgroup_id: int) -> tuple[str, bytes]:
            info = resolver.resolve(cgroup_id)
            fragment = b'"cgroup_path":%s,"pod_uid":%s,"container_id":%s' % (
                _json(info.path),
                _json(info.pod_uid),
                _json(info.container_id),
            )
            return record_key(info, node_name), fragment

        self._engine = _native.Engine(
            int(timeout_s * 1e9),
            max_pending,
            _json(node_name),
            _json(privacy.label),
            cgroup,
            search.mark if search is not None else None,
            search.settle_outcome if search is not None else None,
            None if privacy.policy == "plain" else privacy.apply,
            backend_of,
            _v6_text,
        )

    def remark(self, held: object, mark: Mark | None) -> tuple[str, bytes]:
        """A pair the search tracker held (given to it by the engine), with the mark it ends
        with. Rare (failed opening queries only): decoding and encoding again is cheap enough."""
        assert isinstance(held, tuple)
        key, value = held
        assert isinstance(key, str) and isinstance(value, bytes)
        if mark is None:
            return key, value
        record = msgspec.structs.replace(
            self._codec.decode(value),
            search_expansion=mark.expansion,
            asked_name=self._privacy.apply(mark.asked_name),
        )
        return key, self._codec.encode(record)

    def __len__(self) -> int:
        return len(self._engine)

    def process(self, batch: RecordBatch, offset_ns: int) -> Pairs:
        if batch.discarded:
            self._engine.add_discarded(batch.discarded)
        return self._engine.process(batch.data, batch.given_spans, offset_ns)

    def expire(self, now_mono_ns: int) -> Pairs:
        return self._engine.expire(max(0, now_mono_ns))

    def flush(self) -> Pairs:
        return self._engine.expire((1 << 64) - 1)

    def counters(self) -> dict[str, int]:
        """The engine's counters (matcher, pipeline and decode stats) by field name."""
        return {k: v for k, v in self._engine.counters().items() if isinstance(v, int)}

    @property
    def stats(self) -> MatcherStats:
        c = self._engine.counters()
        reasons = c.pop("reasons")
        assert isinstance(reasons, dict)
        fields = MatcherStats.__dataclass_fields__
        values = {k: v for k, v in c.items() if k in fields and isinstance(v, int)}
        return MatcherStats(**values, reasons=reasons)
