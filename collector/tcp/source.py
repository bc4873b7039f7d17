"""The kernel side of the collector: the loaded tcpconn programs and their ring buffer.

Integration tests use this directly (no Kafka): load, attach, make connections, read.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from pathlib import Path

from collector.kernel.kernelfs import ensure_bpffs, ensure_tracefs
from collector.kernel.libbpf import BpfObject
from collector.kernel.pins import PinSpec
from collector.kernel.programset import COUNTERS_MAP, DEFAULT_TRACEFS, EVENTS_MAP, RingBufferSource
from collector.tcp.events import COUNTER_NAMES, ENDPOINT

# What survives a restart when pinned: the open sockets' state, the ring buffer (with what
# ended while no collector read it) and the loss counters.
SOCKETS_MAP = "socks"
PIPELINE_MAP = "pipeline"
PINNED_MAPS = (SOCKETS_MAP, EVENTS_MAP, COUNTERS_MAP, PIPELINE_MAP)

# (host or "" for any local address, port)
Endpoint = tuple[str, int]


def endpoint_keys(endpoints: Iterable[Endpoint]) -> list[bytes]:
    """``pipeline`` map keys: every address each host resolves to, IPv4 and IPv6 (a name
    that does not resolve now is skipped: its connections are then reported as anyone's)."""
    keys: set[bytes] = set()
    for host, port in endpoints:
        if not host:
            for family in (socket.AF_INET, socket.AF_INET6):
                keys.add(ENDPOINT.pack(b"", port, family, 0))
            continue
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            log.warning("pipeline endpoint %s:%d does not resolve: %s", host, port, exc)
            continue
        for family, _, _, _, sockaddr in infos:
            raw = socket.inet_pton(family, str(sockaddr[0]))
            keys.add(ENDPOINT.pack(raw, port, family, 0))
            if family == socket.AF_INET:  # and as an IPv4-mapped IPv6 socket sees it
                mapped = b"\0" * 10 + b"\xff\xff" + raw
                keys.add(ENDPOINT.pack(mapped, port, socket.AF_INET6, 0))
    return sorted(keys)


log = logging.getLogger("collector.tcp.source")


class TcpConnSource(RingBufferSource):
    """Loads ``tcpconn.bpf.o``, attaches it, and reads its events in batches.

    Closing detaches the program and frees the maps, also when the constructor fails half
    way: use it as a context manager.
    """

    def __init__(
        self,
        bpf_object: Path,
        ringbuf_bytes: int | None = None,
        tracefs: Path = DEFAULT_TRACEFS,
        mount_tracefs: bool = True,
        interim_interval_s: float = 30.0,
        wakeup_bytes: int = 0,
        pin_dir: Path | None = None,
    ) -> None:
        """``interim_interval_s``: an open connection reports its deltas at most this often
        (0: only when it closes). ``wakeup_bytes``: wake :meth:`wait` only once this much is
        waiting (0: every event); callers must then also read on a timeout.

        ``pin_dir`` (on a bpffs, e.g. /sys/fs/bpf/flowscope/<node>/tcpconn): keep the
        programs attached and the maps there after this process, and resume what is pinned
        there (see :mod:`collector.kernel.pins`); None: everything goes when this closes."""
        if mount_tracefs and ensure_tracefs(tracefs):
            log.info("mounted tracefs at %s", tracefs)
        pins = None
        if pin_dir is not None:
            if ensure_bpffs(pin_dir):
                log.info("mounted bpffs for %s", pin_dir)
            pins = PinSpec(pin_dir, PINNED_MAPS, EVENTS_MAP, SOCKETS_MAP)
        targs = {
            "targ_interim_ns": round(interim_interval_s * 1e9),
            "targ_wakeup_bytes": wakeup_bytes,
        }
        self._wakeup_bytes = wakeup_bytes
        super().__init__(
            bpf_object,
            ringbuf_bytes,
            targs,
            COUNTER_NAMES,
            BpfObject.attach_all,
            tracefs,
            pins,
        )
        r = self.restart
        log.info(
            "%s %s from %s (ring buffer %d bytes; pins %s: %s%s)",
            "resumed" if r.mode == "resumed" else "attached",
            ", ".join(self.program_names()),
            bpf_object,
            self.ringbuf_bytes,
            pin_dir or "off",
            r.mode,
            f", {r.backlog_records} records waiting, {r.open_connections} open connections"
            if r.mode == "resumed"
            else "",
        )

    def set_pipeline_endpoints(self, endpoints: Iterable[Endpoint]) -> int:
        """Keep connections to or from these endpoints (flowscope's own Kafka, API server,
        metrics port) out of the records; the kernel counts them as pipeline_closed or
        pipeline_failed. Returns how many map keys were written."""
        keys = endpoint_keys(endpoints)
        for key in keys:
            self._obj.map_update(PIPELINE_MAP, key, b"\1")
        return len(keys)

    def kernel_counters(self) -> dict[str, int]:
        counters = super().kernel_counters()
        counters.update(self.restart.counters())
        return counters

    def wait(self, timeout_s: float) -> bool:
        # Not woken by a wakeup older than the last read (see RingBufferReader.wait).
        return self.reader.wait(timeout_s, self._wakeup_bytes)
