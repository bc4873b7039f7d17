"""Kernel packet drops per window: bpf/drops.bpf.o to RawPacketDrops records.

The program counts every ``skb:kfree_skb`` (a drop, with the kernel's reason) into one of two
hash maps; the collector drains them as :mod:`collector.udp.flows` does (flip, then read the map one
whole interval after it stopped being current), so nothing is lost between read and delete.
A drop with a socket is attributed by the socket's cgroup; one without (forwarded, or not
delivered yet) by the network namespace it happened in: a pod's, found from the processes in
it, or the node's.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from collector.kernel.btfenum import kernel_enum
from collector.kernel.flipmaps import MapPair, WindowReporter
from collector.kernel.kernelfs import ensure_tracefs
from collector.kernel.libbpf import BpfError, BpfObject
from collector.kernel.programset import DEFAULT_TRACEFS, ProgramSet
from collector.node.attribution import CgroupInfo, CgroupResolver, parse_kubelet_path
from collector.tcp.events import Decoder
from flowscope.codec import JsonCodec
from flowscope.records import RawPacketDrops

log = logging.getLogger("collector.drops.reporter")

# struct drops_key / drops_value (bpf/drops.h), little-endian, no implicit padding.
KEY_FORMAT: Final = "<QII16s16sHB5x"
VALUE_FORMAT: Final = "<QQ"
KEY = struct.Struct(KEY_FORMAT)
VALUE = struct.Struct(VALUE_FORMAT)
KEY_SIZE: Final = 56
VALUE_SIZE: Final = 16
assert KEY.size == KEY_SIZE and VALUE.size == VALUE_SIZE
COUNTER_NAMES: Final = ("drops", "map_full", "no_reason")  # enum drops_counter, index order
DROP_MAPS: Final = ("drops0", "drops1")
REASON_ENUM: Final = "skb_drop_reason"
REASON_PREFIX: Final = "SKB_DROP_REASON_"


def drop_reasons() -> dict[int, str]:
    """The running kernel's drop reasons by number: ``NETFILTER_DROP``, ``NO_SOCKET``..."""
    names = kernel_enum(REASON_ENUM, REASON_PREFIX)
    return {n: name.removeprefix("SKB_") for n, name in names.items()}  # SKB_CONSUMED


@dataclass(frozen=True)
class Drop:
    cgroup_id: int
    netns_ino: int
    reason_code: int
    family: Literal[0, 4, 6]
    ip_proto: int
    src_addr: str | None
    dst_addr: str | None
    packets: int
    bytes: int


def decode_drop(decoder: Decoder, key: bytes, value: bytes) -> Drop:
    """One map entry. Raises ValueError on an unknown family."""
    cgroup_id, netns, reason, saddr, daddr, family, proto = KEY.unpack(key)
    packets, nbytes = VALUE.unpack(value)
    if family == 0:
        return Drop(cgroup_id, netns, reason, 0, proto, None, None, packets, nbytes)
    version, src = decoder.address(family, saddr)
    _, dst = decoder.address(family, daddr)
    return Drop(cgroup_id, netns, reason, version, proto, src, dst, packets, nbytes)


class DropSource(ProgramSet[BpfObject]):
    """Loads ``drops.bpf.o`` and attaches it to the ``skb:kfree_skb`` tracepoint."""

    def __init__(
        self, bpf_object: Path, tracefs: Path = DEFAULT_TRACEFS, mount_tracefs: bool = True
    ) -> None:
        self._maps = MapPair(DROP_MAPS, KEY_SIZE, VALUE_SIZE)
        if mount_tracefs and ensure_tracefs(tracefs):
            log.info("mounted tracefs at %s", tracefs)

        def setup(obj: BpfObject) -> None:
            self._maps.reset(obj)
            obj.attach_all()

        super().__init__(BpfObject(bpf_object, tracefs=tracefs), setup)

    def flip(self) -> None:
        self._maps.flip(self._obj)

    def drain_inactive(self) -> list[tuple[bytes, bytes]]:
        return self._maps.drain(self._obj)

    def kernel_counters(self) -> dict[str, int]:
        return self.percpu_counters("drop_counters", COUNTER_NAMES)


def _proc_cgroup(pid_dir: str) -> str | None:
    """The cgroup v2 path of a process (the ``0::`` line), None if it has none."""
    try:
        with open(f"{pid_dir}/cgroup", encoding="ascii") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        return None
    return None


def scan_netns_cgroups(proc: Path = Path("/proc")) -> dict[int, str]:
    """netns inode -> the cgroup v2 path of a process in it (a pod's container, preferably:
    a pod's namespace also holds its sandbox's pause process)."""
    found: dict[int, str] = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            inode = os.stat(f"{entry.path}/ns/net").st_ino
        except OSError:
            continue  # exited, or a kernel thread
        path = _proc_cgroup(entry.path)
        if path is None:
            continue
        if inode not in found or (
            parse_kubelet_path(path)[1] and not parse_kubelet_path(found[inode])[1]
        ):
            found[inode] = path
    return found


class NetnsPods:
    """netns inode -> the pod living in it, rescanned on a miss at most once per interval."""

    def __init__(
        self,
        min_scan_interval_s: float = 10.0,
        scan: Callable[[], dict[int, str]] = scan_netns_cgroups,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scan = scan
        self._clock = clock
        self._every = min_scan_interval_s
        self._next_scan = float("-inf")
        self._paths: dict[int, str] = {}
        self.scans = 0

    def resolve(self, inode: int) -> CgroupInfo:
        path = self._paths.get(inode)
        if path is None and inode and self._clock() >= self._next_scan:
            self._paths = self._scan()
            self.scans += 1
            self._next_scan = self._clock() + self._every
            path = self._paths.get(inode)
        if path is None:
            return CgroupInfo(None, None, None)
        pod_uid, container_id = parse_kubelet_path(path)
        return CgroupInfo(path, pod_uid, container_id)


@dataclass
class DropStats:
    windows: int = 0
    records: int = 0
    packets: int = 0
    decode_errors: int = 0
    produce_refused: int = 0
    unnamed_reasons: int = 0  # records whose reason number the kernel's BTF did not name


class DropReporter(WindowReporter):
    """Each window of kernel drops -> RawPacketDrops records, with their owners."""

    def __init__(
        self,
        source: DropSource,
        resolver: CgroupResolver,
        produce: Callable[[str, bytes, str], bool],
        topic: str,
        node: str,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        netns_pods: NetnsPods | None = None,
        reasons: dict[int, str] | None = None,
    ) -> None:
        super().__init__(source, interval_s, clock)
        self._source: DropSource = source
        self._resolver = resolver
        self._produce = produce
        self._topic = topic
        self._node = node
        self._decoder = Decoder()
        self._codec = JsonCodec(RawPacketDrops)
        self._netns = netns_pods or NetnsPods(interval_s)
        self._own_netns = os.stat("/proc/self/ns/net").st_ino
        if reasons is None:
            try:
                reasons = drop_reasons()
            except BpfError as exc:  # the numbers are still reported
                log.warning("drop reasons are not named: %s", exc)
                reasons = {}
        self._reasons = reasons
        self.stats = DropStats()

    def _emit(self, entries: list[tuple[bytes, bytes]], start_ns: int, end_ns: int) -> None:
        self.stats.windows += 1
        for key, value in entries:
            try:
                drop = decode_drop(self._decoder, key, value)
            except (ValueError, struct.error):
                self.stats.decode_errors += 1
                continue
            node_netns = drop.netns_ino == self._own_netns
            if drop.cgroup_id:
                owner = self._resolver.resolve(drop.cgroup_id)
            elif drop.netns_ino and not node_netns:
                owner = self._netns.resolve(drop.netns_ino)
            else:
                owner = CgroupInfo(None, None, None)
            reason = self._reasons.get(drop.reason_code)
            if reason is None:
                self.stats.unnamed_reasons += 1
                reason = f"UNKNOWN_{drop.reason_code}"
            record = RawPacketDrops(
                node=self._node,
                window_start_ns=start_ns,
                window_end_ns=end_ns,
                reason=reason,
                reason_code=drop.reason_code,
                packets=drop.packets,
                bytes=drop.bytes,
                cgroup_id=drop.cgroup_id,
                cgroup_path=owner.path,
                pod_uid=owner.pod_uid,
                container_id=owner.container_id,
                netns_ino=drop.netns_ino,
                node_netns=node_netns,
                family=drop.family,
                ip_proto=drop.ip_proto,
                src_addr=drop.src_addr,
                dst_addr=drop.dst_addr,
            )
            self.stats.packets += drop.packets
            key_text = owner.pod_uid if owner.pod_uid is not None else self._node
            if self._produce(self._topic, self._codec.encode(record), key_text):
                self.stats.records += 1
            else:
                self.stats.produce_refused += 1

    def counters(self) -> dict[str, int]:
        values = {f"drops_{k}": v for k, v in vars(self.stats).items()}
        values["drops_netns_scans"] = self._netns.scans
        values.update({f"kernel_drops_{k}": v for k, v in self._source.kernel_counters().items()})
        return values


def start_drops(
    stack: ExitStack,
    bpf_object: Path,
    tracefs: Path,
    mount_tracefs: bool,
    resolver: CgroupResolver,
    produce: Callable[[str, bytes, str], bool],
    topic: str,
    node: str,
    interval_s: float,
) -> DropReporter | None:
    """The drop reporter, its program attached; None when the kernel cannot run it (the
    reason is logged: drops are one signal among many, the collector runs on without)."""
    try:
        source = stack.enter_context(DropSource(bpf_object, tracefs, mount_tracefs))
    except BpfError as exc:
        log.warning("kernel drop reasons off: %s", exc)
        return None
    return DropReporter(source, resolver, produce, topic, node, interval_s)
