"""The real tcpconn program on this kernel: real loopback connections with known payloads,
read back through the collector's own loader and ring buffer reader (no Kafka).

The client runs in a child process placed in a fresh cgroup shaped like the kubelet's, so
the event's cgroup id, pid and comm can be told apart from the server's (this process).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from collector.kernel.libbpf import BpfError, BpfObject
from collector.node.attribution import CgroupResolver
from collector.settings import DEFAULT_BPF_OBJECT, default_cgroup_root
from collector.tcp.events import DecodeStats, TcpConnEvent, clock_offset_ns, decode_batch
from collector.tcp.source import TcpConnSource

CLIENT_BYTES = 1234
SERVER_BYTES = 5678

CLIENT_SCRIPT = r"""
import ctypes, socket, sys
procs, comm, family, host, port, send, expect = sys.argv[1:8]
with open(procs, "w") as f:          # join the pod's cgroup before creating the socket
    f.write("0")
ctypes.CDLL(None).prctl(15, comm.encode(), 0, 0, 0)  # PR_SET_NAME
s = socket.socket(int(family), socket.SOCK_STREAM)
s.connect((host, int(port)))
import os
print(s.getsockname()[1], os.getpid(), flush=True)
s.sendall(b"c" * int(send))
got = 0
while got < int(expect):
    chunk = s.recv(65536)
    if not chunk:
        sys.exit("server closed early")
    got += len(chunk)
s.close()
"""


@pytest.fixture(scope="module")
def bpf_object(bpf_built: None) -> Path:
    return DEFAULT_BPF_OBJECT


@pytest.fixture
def source(bpf_object: Path) -> Iterator[TcpConnSource]:
    with TcpConnSource(bpf_object, ringbuf_bytes=1 << 20) as src:
        yield src


@dataclass(frozen=True)
class PodCgroup:
    root: Path
    path: Path
    pod_uid: str
    container_id: str

    @property
    def relative(self) -> str:
        return "/" + str(self.path.relative_to(self.root))


@pytest.fixture
def pod_cgroup() -> Iterator[PodCgroup]:
    root = default_cgroup_root()
    top = root / f"flowscope-test-{secrets.token_hex(4)}"
    uid = str(uuid.uuid4())
    cid = secrets.token_hex(32)
    leaf = top / "kubepods" / "burstable" / f"pod{uid}" / cid
    leaf.mkdir(parents=True)
    try:
        yield PodCgroup(root, leaf, uid, cid)
    finally:
        # Children first; a cgroup with processes cannot be removed, so kill leftovers.
        for pid in _procs(top):
            _kill(pid)
        for directory in sorted(
            (Path(d) for d, _, _ in os.walk(top)), key=lambda p: len(p.parts), reverse=True
        ):
            for _ in range(50):
                try:
                    directory.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)


def _procs(top: Path) -> list[int]:
    pids: list[int] = []
    for directory, _, _ in os.walk(top):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (Path(directory) / "cgroup.procs").read_text().split()]
    return pids


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)


def own_cgroup_inode() -> int:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return (default_cgroup_root() / line[3:].lstrip("/")).stat().st_ino
    raise AssertionError("no cgroup v2 line in /proc/self/cgroup")


def collect(
    source: TcpConnSource, match: Callable[[TcpConnEvent], bool], want: int, timeout_s: float = 5
) -> list[TcpConnEvent]:
    """Events for which ``match`` holds, until ``want`` of them arrived or the timeout."""
    found: list[TcpConnEvent] = []
    stats = DecodeStats()
    offset = clock_offset_ns()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        source.wait(0.1)
        found += [e for e in decode_batch(source.read(), offset, stats) if match(e)]
        if len(found) >= want:
            # Let any unexpected duplicate arrive too, so "exactly" is really tested.
            time.sleep(0.2)
            found += [e for e in decode_batch(source.read(), offset, stats) if match(e)]
            break
    assert stats.decode_errors == 0
    return found


def serve_once(listener: socket.socket, done: threading.Event) -> None:
    conn, _ = listener.accept()
    with conn:
        got = 0
        while got < CLIENT_BYTES:
            chunk = conn.recv(65536)
            assert chunk, "client closed early"
            got += len(chunk)
        conn.sendall(b"s" * SERVER_BYTES)
        while conn.recv(65536):  # until the client's FIN
            pass
    done.set()


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_one_event_per_end_with_exact_bytes(
    source: TcpConnSource, pod_cgroup: PodCgroup, family: socket.AddressFamily
) -> None:
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    comm = f"fsc-{secrets.token_hex(3)}"
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen()
    server_port = listener.getsockname()[1]
    done = threading.Event()
    server = threading.Thread(target=serve_once, args=(listener, done), daemon=True)
    server.start()
    try:
        client = subprocess.run(
            [
                sys.executable,
                "-c",
                CLIENT_SCRIPT,
                str(pod_cgroup.path / "cgroup.procs"),
                comm,
                str(int(family)),
                host,
                str(server_port),
                str(CLIENT_BYTES),
                str(SERVER_BYTES),
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        assert client.returncode == 0, client.stderr
        client_port, client_pid = (int(x) for x in client.stdout.split())
        assert done.wait(5), "server thread did not finish"
    finally:
        listener.close()

    events = collect(
        source,
        lambda e: {e.local_port, e.remote_port} == {server_port, client_port},
        want=2,
    )
    by_role = {e.role: e for e in events}
    assert sorted(e.role for e in events) == ["client", "server"], events
    c, s = by_role["client"], by_role["server"]

    assert (c.local_addr, c.remote_addr, c.family) == (host, host, 4 if host != "::1" else 6)
    assert (c.local_port, c.remote_port) == (client_port, server_port)
    assert (s.local_port, s.remote_port) == (server_port, client_port)
    # Exact payload bytes: the SYN and FIN sequence numbers are not counted.
    assert (c.bytes_sent, c.bytes_received) == (CLIENT_BYTES, SERVER_BYTES)
    assert (s.bytes_sent, s.bytes_received) == (SERVER_BYTES, CLIENT_BYTES)
    assert c.connect_latency_us is not None and 0 < c.connect_latency_us < 1_000_000
    assert s.connect_latency_us is None
    assert c.start_time_ns < c.end_time_ns and s.start_time_ns < s.end_time_ns
    assert abs(c.end_time_ns - time.time_ns()) < 30 * 10**9  # epoch ns, not boot time
    assert c.srtt_us > 0 and c.retrans_segs == 0
    # Who: the client is the child process in the pod's cgroup, the server is us.
    assert (c.pid, c.comm) == (client_pid, comm)
    assert s.pid == os.getpid()
    assert s.comm == Path("/proc/self/comm").read_text().strip()
    assert c.cgroup_id == pod_cgroup.path.stat().st_ino
    assert s.cgroup_id == own_cgroup_inode()

    resolver = CgroupResolver(pod_cgroup.root)
    info = resolver.resolve(c.cgroup_id)
    assert (info.path, info.pod_uid, info.container_id) == (
        pod_cgroup.relative,
        pod_cgroup.pod_uid,
        pod_cgroup.container_id,
    )
    counters = source.kernel_counters()
    assert counters["lost_ringbuf"] == 0 and counters["events"] >= 2


def test_reset_connection_counts_payload_without_fin(source: TcpConnSource) -> None:
    """An abortive close (SO_LINGER 0 sends RST): no FIN to remove, bytes still exact."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = listener.accept()
    client.sendall(b"x" * 3000)
    got = 0
    while got < 3000:
        got += len(conn.recv(65536))
    conn.sendall(b"y" * 10)
    assert client.recv(10) == b"y" * 10
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client_port = client.getsockname()[1]
    client.close()
    time.sleep(0.05)
    conn.close()
    listener.close()

    events = collect(source, lambda e: {e.local_port, e.remote_port} == {port, client_port}, 2)
    by_role = {e.role: e for e in events}
    assert sorted(by_role) == ["client", "server"]
    assert (by_role["client"].bytes_sent, by_role["client"].bytes_received) == (3000, 10)
    assert (by_role["server"].bytes_sent, by_role["server"].bytes_received) == (10, 3000)
    assert by_role["client"].close_state == "ESTABLISHED"


def test_refused_connect_is_one_unestablished_client_event(source: TcpConnSource) -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens on this port now
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    [event] = collect(source, lambda e: e.remote_port == port, want=1)
    assert event.role == "client"
    assert not event.established
    assert event.close_state == "SYN_SENT"
    assert event.connect_latency_us is None
    assert (event.bytes_sent, event.bytes_received) == (0, 0)


def test_connection_opened_before_attach_is_reported_with_role_unknown(
    bpf_object: Path,
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = listener.accept()
    client_port = client.getsockname()[1]
    try:
        with TcpConnSource(bpf_object, ringbuf_bytes=1 << 20) as late:
            client.sendall(b"z" * 100)
            assert conn.recv(100)
            client.close()
            conn.close()
            events = collect(
                late, lambda e: {e.local_port, e.remote_port} == {port, client_port}, 2
            )
            assert late.kernel_counters()["untracked_close"] >= 2
    finally:
        client.close()
        conn.close()
        listener.close()
    assert sorted(e.role for e in events) == ["unknown", "unknown"]
    for event in events:
        assert event.start_time_ns == event.end_time_ns  # the start was not seen
        assert event.pid == os.getpid()  # taken when close() ran, not at connect()
        assert event.established


def test_close_detaches_and_frees_the_program(bpf_object: Path) -> None:
    def exists(prog_id: int) -> bool:
        shown = subprocess.run(
            ["bpftool", "prog", "show", "id", str(prog_id)], capture_output=True, check=False
        )
        return shown.returncode == 0

    with TcpConnSource(bpf_object, ringbuf_bytes=1 << 20) as src:
        ids = src.program_ids()
        assert ids and all(exists(i) for i in ids)
    deadline = time.monotonic() + 5  # programs are freed after an RCU grace period
    while any(exists(i) for i in ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(exists(i) for i in ids)
    with pytest.raises(RuntimeError):
        src.read()


def test_a_bad_object_fails_with_libbpf_own_words(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.bpf.o"
    bogus.write_bytes(b"not an ELF file")
    with pytest.raises(BpfError, match=r"(?s)opening .*format invalid.*not a proper ELF"):
        TcpConnSource(bogus)


def test_a_missing_object_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(BpfError, match="make -C bpf"):
        TcpConnSource(tmp_path / "missing.bpf.o")


def test_load_time_knobs_are_set_by_name_and_reach_the_kernel(bpf_object: Path) -> None:
    knobs = {"targ_interim_ns": 7_000_000_000, "targ_wakeup_bytes": 4096}
    with BpfObject(bpf_object, rodata=knobs) as obj:
        variables = obj.rodata_variables()
        assert set(variables) == set(knobs)
        assert {variables[n].offset for n in knobs} == {0, 8}  # laid out by libbpf at open
        assert {n: obj.rodata_value(n) for n in knobs} == knobs  # the kernel's copy
    with BpfObject(bpf_object) as obj:  # the defaults compiled in
        assert obj.rodata_value("targ_interim_ns") == 30_000_000_000
        assert obj.rodata_value("targ_wakeup_bytes") == 0


def test_an_unknown_or_oversized_knob_is_refused_before_load(bpf_object: Path) -> None:
    with pytest.raises(BpfError, match=r"targ_nope .*it has: targ_interim_ns, targ_wakeup_bytes"):
        BpfObject(bpf_object, rodata={"targ_nope": 1})
    with pytest.raises(BpfError, match="targ_wakeup_bytes = -1 does not fit in 8 bytes"):
        BpfObject(bpf_object, rodata={"targ_wakeup_bytes": -1})
    dns = bpf_object.with_name("dns.bpf.o")
    with pytest.raises(BpfError, match="targ_port = 65536 does not fit in 2 bytes"):
        BpfObject(dns, rodata={"targ_port": 65536})
    with BpfObject(dns, rodata={"targ_port": 5353}) as obj:
        assert obj.rodata_value("targ_port") == 5353
