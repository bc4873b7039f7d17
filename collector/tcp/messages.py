"""A ring-buffer batch -> its Kafka messages ``(key, JSON value, records)``. Pure: no I/O
(the resolvers it is given may walk the cgroup tree or ask conntrack, as they do anyway).

Two implementations that produce the same bytes (tests/unit/collector/test_collector_native.py
compares them over every kind of record):

* :class:`NativeMessages`: ``collector/tcp/_encode.c`` (``make native``) writes each message's
  bytes straight from the ring buffer's bytes, ~0.5 µs per record; it calls back into Python
  for what needs Python state: the cgroup attribution (once per cgroup per batch), unusual
  comm names, and records to a Service address (conntrack), which the Python path makes.
* :class:`PythonMessages`: :class:`collector.tcp.events.Decoder`, then
  :func:`collector.tcp.record.build_record` and msgspec, one record at a time: the reference (the
  spec the C is checked against), and the fallback where the extension was not built.

Messages: one JSON object per record when ``batch_records`` is 1; else JSON arrays of up to
``batch_records`` records of one key (pod) in ring order, halved (in order) while one is over
``batch_bytes``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import msgspec

from collector.kernel.ringbuf import RecordBatch
from collector.node.attribution import CgroupInfo, CgroupResolver
from collector.node.nat import NatResolver
from collector.tcp.events import Decoder, DecodeStats
from collector.tcp.record import build_record, encode_record, encode_wire, record_key
from flowscope.records import RawTcpConnection

log = logging.getLogger("collector")

Message = tuple[str, bytes, int]  # partition key, value, records in it
_json = msgspec.json.Encoder().encode


@dataclass
class EncodeStats:
    failed_connects: int = 0  # final records of connections that never established
    interim_records: int = 0  # records of connections still open


class MessageEncoder(Protocol):
    stats: EncodeStats

    def encode(
        self, batch: RecordBatch, clock_offset: int, decode_stats: DecodeStats
    ) -> list[Message]: ...


def split_messages(
    groups: dict[str, list[RawTcpConnection]], batch_records: int, batch_bytes: int
) -> list[Message]:
    """Records grouped by key -> messages (see the module docstring)."""
    out: list[Message] = []
    for key, records in groups.items():
        if batch_records == 1:
            out.extend((key, encode_wire(record), 1) for record in records)
            continue
        for start in range(0, len(records), batch_records):
            _split(records[start : start + batch_records], key, batch_bytes, out)
    return out


def _split(records: list[RawTcpConnection], key: str, batch_bytes: int, out: list[Message]) -> None:
    value = encode_wire(records)
    if len(value) > batch_bytes and len(records) > 1:
        half = len(records) // 2  # rare: records are ~600 bytes; keep the order
        _split(records[:half], key, batch_bytes, out)
        _split(records[half:], key, batch_bytes, out)
        return
    out.append((key, value, len(records)))


class PythonMessages:
    """The reference path: decode, attribute and build each record as the spec reads."""

    def __init__(
        self,
        resolver: CgroupResolver,
        node: str,
        nat: NatResolver | None = None,
        batch_records: int = 1,
        batch_bytes: int = 256 << 10,
    ) -> None:
        self._resolver = resolver
        self._node = node
        self._nat = nat
        self._decoder = Decoder()
        self._batch_records = batch_records
        self._batch_bytes = batch_bytes
        self.stats = EncodeStats()

    def encode(
        self, batch: RecordBatch, clock_offset: int, decode_stats: DecodeStats
    ) -> list[Message]:
        # Each cgroup is resolved once per batch: a second resolve of an unknown cgroup
        # would count a second miss, and a cgroup that appears is named from the next batch.
        infos: dict[int, CgroupInfo] = {}
        groups: dict[str, list[RawTcpConnection]] = {}
        for event in self._decoder.decode_batch(batch, clock_offset, decode_stats):
            info = infos.get(event.cgroup_id)
            if info is None:
                info = infos[event.cgroup_id] = self._resolver.resolve(event.cgroup_id)
            backend = self._nat.resolve(event) if self._nat is not None else None
            if event.interim:
                self.stats.interim_records += 1
            elif not event.established:
                self.stats.failed_connects += 1
            record = build_record(event, info, self._node, backend)
            groups.setdefault(record_key(info, self._node), []).append(record)
        return split_messages(groups, self._batch_records, self._batch_bytes)


def cgroup_fragment(info: CgroupInfo) -> bytes:
    """The record's cgroup_path, pod_uid and container_id members, as msgspec writes them."""
    return (
        b'"cgroup_path":'
        + _json(info.path)
        + b',"pod_uid":'
        + _json(info.pod_uid)
        + b',"container_id":'
        + _json(info.container_id)
    )


class NativeMessages:
    """The C path (``collector.tcp._encode``); raises ImportError if it was not built."""

    def __init__(
        self,
        resolver: CgroupResolver,
        node: str,
        nat: NatResolver | None = None,
        batch_records: int = 1,
        batch_bytes: int = 256 << 10,
    ) -> None:
        from collector.tcp._encode import Encoder

        self._resolver = resolver
        self._node = node
        self._nat = nat
        self._decoder = Decoder()
        # The cgroups of the batch being encoded: the Python path resolves each once per
        # batch, and the fallback reuses the answer (a second resolve of an unknown cgroup
        # would count a second miss).
        self._infos: dict[int, CgroupInfo] = {}
        self._fragments: dict[CgroupInfo, bytes] = {}
        self._data = b""
        self._clock_offset = 0
        networks = (
            []
            if nat is None
            else [(net.version, net.network_address.packed, net.prefixlen) for net in nat.cidrs]
        )
        self._native = Encoder(
            _json(node),
            self._cgroup,
            self._comm,
            self._fallback,
            networks,
            batch_records,
            batch_bytes,
        )
        self.stats = EncodeStats()

    def _cgroup(self, cgroup_id: int) -> tuple[str, bytes]:
        info = self._infos[cgroup_id] = self._resolver.resolve(cgroup_id)
        fragment = self._fragments.get(info)
        if fragment is None:
            if len(self._fragments) >= 65536:
                self._fragments.clear()
            fragment = self._fragments[info] = cgroup_fragment(info)
        return record_key(info, self._node), fragment

    def _comm(self, raw: bytes) -> bytes:
        return _json(self._decoder.comm(raw))

    def _fallback(self, offset: int) -> bytes:
        """A record to a Service address (or with impossible times): the Python path."""
        event = self._decoder.decode(self._data, offset, self._clock_offset)
        backend = self._nat.resolve(event) if self._nat is not None else None
        return encode_record(event, self._infos[event.cgroup_id], self._node, backend)

    def encode(
        self, batch: RecordBatch, clock_offset: int, decode_stats: DecodeStats
    ) -> list[Message]:
        self._data, self._clock_offset = batch.data, clock_offset
        self._infos.clear()
        try:
            messages, decoded, errors, failed, interim = self._native.encode(
                batch.data, batch.given_spans, clock_offset
            )
        finally:
            self._data = b""
            self._infos.clear()
        decode_stats.discarded += batch.discarded
        decode_stats.decoded += decoded
        decode_stats.decode_errors += errors
        self.stats.failed_connects += failed
        self.stats.interim_records += interim
        return messages


_warned = False


def message_encoder(
    resolver: CgroupResolver,
    node: str,
    nat: NatResolver | None = None,
    batch_records: int = 1,
    batch_bytes: int = 256 << 10,
) -> MessageEncoder:
    """The native encoder if it was built, else the Python one (with a warning, once)."""
    global _warned
    try:
        return NativeMessages(resolver, node, nat, batch_records, batch_bytes)
    except ImportError as exc:
        if not _warned:
            _warned = True
            log.warning(
                "collector.tcp._encode is not built (%s): the reference encoder costs "
                "~10x more CPU per record; run `make native`",
                exc,
            )
        return PythonMessages(resolver, node, nat, batch_records, batch_bytes)
