"""The kernel side of the collector: the loaded tcpconn programs and their ring buffer.

Integration tests use this directly (no Kafka): load, attach, make connections, read.
"""

from __future__ import annotations

import logging
from pathlib import Path

from collector.events import COUNTER_NAMES, TARGS
from collector.kernelfs import ensure_tracefs
from collector.libbpf import BpfObject
from collector.programset import DEFAULT_TRACEFS, RingBufferSource

log = logging.getLogger("collector.source")


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
    ) -> None:
        """``interim_interval_s``: an open connection reports its deltas at most this often
        (0: only when it closes). ``wakeup_bytes``: wake :meth:`wait` only once this much is
        waiting (0: every event); callers must then also read on a timeout."""
        if mount_tracefs and ensure_tracefs(tracefs):
            log.info("mounted tracefs at %s", tracefs)
        targs = TARGS.pack(round(interim_interval_s * 1e9), wakeup_bytes)
        self._wakeup_bytes = wakeup_bytes
        super().__init__(
            bpf_object, ringbuf_bytes, targs, COUNTER_NAMES, BpfObject.attach_all, tracefs
        )
        log.info(
            "attached %s from %s (ring buffer %d bytes)",
            ", ".join(self.program_names()),
            bpf_object,
            self.ringbuf_bytes,
        )

    def wait(self, timeout_s: float) -> bool:
        # Not woken by a wakeup older than the last read (see RingBufferReader.wait).
        return self.reader.wait(timeout_s, self._wakeup_bytes)
