"""UDP volume per (local, remote) pair per window: bpf/udpflow.bpf.o to RawUdpFlow records.

The kernel sums into one of two hash maps (generation ``gen``). Every interval the collector
drains the map that has not been written since the *previous* flip, then flips: a program
that read the old generation a moment before a flip may still add to that map for a few
microseconds, so a map is only read one whole interval after it stopped being current.
Records therefore describe the window before last; nothing is lost between read and delete.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from collector.kernel.flipmaps import MapPair, WindowReporter
from collector.kernel.libbpf import BpfObject
from collector.kernel.programset import ProgramSet
from collector.node.attribution import CgroupResolver
from collector.node.nat import NatResolver
from collector.tcp.events import Decoder
from flowscope.codec import JsonCodec
from flowscope.records import RawUdpFlow

log = logging.getLogger("collector.udp.flows")

# struct udpflow_key / udpflow_value (bpf/udpflow.h), little-endian, no implicit padding.
KEY_FORMAT: Final = "<Q16s16sHHH2x"
VALUE_FORMAT: Final = "<QQQQ"
KEY = struct.Struct(KEY_FORMAT)
VALUE = struct.Struct(VALUE_FORMAT)
KEY_SIZE: Final = 48
VALUE_SIZE: Final = 32
assert KEY.size == KEY_SIZE and VALUE.size == VALUE_SIZE
COUNTER_NAMES: Final = ("packets", "map_full")  # enum udpflow_counter, in index order
FLOW_MAPS: Final = ("flows0", "flows1")
IPPROTO_UDP: Final = 17


@dataclass(frozen=True)
class UdpFlow:
    family: Literal[4, 6]
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    cgroup_id: int
    bytes_out: int
    packets_out: int
    bytes_in: int
    packets_in: int


def decode_flow(decoder: Decoder, key: bytes, value: bytes) -> UdpFlow:
    """One map entry. Raises ValueError on an unknown family."""
    cgroup_id, local, remote, lport, rport, family = KEY.unpack(key)
    bytes_out, packets_out, bytes_in, packets_in = VALUE.unpack(value)
    version, local_addr = decoder.address(family, local)
    _, remote_addr = decoder.address(family, remote)
    return UdpFlow(
        version,
        local_addr,
        lport,
        remote_addr,
        rport,
        cgroup_id,
        bytes_out,
        packets_out,
        bytes_in,
        packets_in,
    )


class UdpFlowSource(ProgramSet[BpfObject]):
    """Loads ``udpflow.bpf.o`` and attaches it to the cgroup v2 root (every socket)."""

    def __init__(self, bpf_object: Path, cgroup_root: Path) -> None:
        self._maps = MapPair(FLOW_MAPS, KEY_SIZE, VALUE_SIZE)

        def setup(obj: BpfObject) -> None:
            self._maps.reset(obj)
            obj.attach_all_to_cgroup(cgroup_root)

        super().__init__(BpfObject(bpf_object), setup)

    def flip(self) -> None:
        self._maps.flip(self._obj)

    def drain_inactive(self) -> list[tuple[bytes, bytes]]:
        return self._maps.drain(self._obj)

    def drain_current(self) -> list[tuple[bytes, bytes]]:
        return self._maps.drain(self._obj, current=True)

    def kernel_counters(self) -> dict[str, int]:
        return self.percpu_counters("udp_counters", COUNTER_NAMES)


@dataclass
class UdpStats:
    windows: int = 0
    records: int = 0
    decode_errors: int = 0
    produce_refused: int = 0
    nat_translated: int = 0  # flows to a Service address named by their backend


class UdpReporter(WindowReporter):
    """Each window of UDP volume -> one RawUdpFlow record per (local, remote) pair."""

    def __init__(
        self,
        source: UdpFlowSource,
        resolver: CgroupResolver,
        produce: Callable[[str, bytes, str], bool],
        topic: str,
        node: str,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        nat: NatResolver | None = None,
    ) -> None:
        super().__init__(source, interval_s, clock)
        self._source: UdpFlowSource = source
        # Datagrams to a ClusterIP leave the pod addressed to it (kube-proxy rewrites them in
        # the node's namespace): the backend is in conntrack, as for TCP.
        self._nat = nat
        self._resolver = resolver
        self._produce = produce
        self._topic = topic
        self._node = node
        self._decoder = Decoder()
        self._codec = JsonCodec(RawUdpFlow)
        self.stats = UdpStats()

    def _emit(self, entries: list[tuple[bytes, bytes]], start_ns: int, end_ns: int) -> None:
        self.stats.windows += 1
        for key, value in entries:
            try:
                flow = decode_flow(self._decoder, key, value)
            except (ValueError, struct.error):
                self.stats.decode_errors += 1
                continue
            cgroup = self._resolver.resolve(flow.cgroup_id)
            remote, original = (flow.remote_addr, flow.remote_port), None
            backend = self._backend(flow)
            if backend is not None:
                remote, original = backend, remote
                self.stats.nat_translated += 1
            record = RawUdpFlow(
                node=self._node,
                window_start_ns=start_ns,
                window_end_ns=end_ns,
                family=flow.family,
                local_addr=flow.local_addr,
                local_port=flow.local_port,
                remote_addr=remote[0],
                remote_port=remote[1],
                cgroup_id=flow.cgroup_id,
                cgroup_path=cgroup.path,
                pod_uid=cgroup.pod_uid,
                container_id=cgroup.container_id,
                bytes_out=flow.bytes_out,
                packets_out=flow.packets_out,
                bytes_in=flow.bytes_in,
                packets_in=flow.packets_in,
                original_remote_addr=original[0] if original else None,
                original_remote_port=original[1] if original else None,
            )
            key_text = cgroup.pod_uid if cgroup.pod_uid is not None else self._node
            if self._produce(self._topic, self._codec.encode(record), key_text):
                self.stats.records += 1
            else:
                self.stats.produce_refused += 1

    def _backend(self, flow: UdpFlow) -> tuple[str, int] | None:
        """The backend a Service-addressed flow was sent to (the node's conntrack first)."""
        nat = self._nat
        if nat is None or not nat.in_service(flow.remote_addr):
            return None
        return nat.resolve_tuple(
            flow.family,
            flow.local_addr,
            flow.remote_addr,
            flow.local_port,
            flow.remote_port,
            IPPROTO_UDP,
        )

    def counters(self) -> dict[str, int]:
        values = {f"udp_{k}": v for k, v in vars(self.stats).items()}
        values.update({f"kernel_udp_{k}": v for k, v in self._source.kernel_counters().items()})
        return values
