"""The only module that calls libbpf: ctypes over the system's ``libbpf.so.1``.

Why ctypes over the system library rather than a binding: the maintained Python bindings
either wrap BCC (which compiles C at run time and needs kernel headers) or must be built
against libbpf; the collector needs about fifteen functions of libbpf's stable 1.x ABI, and
Debian's ``libbpf1`` is the same library that bpftool and the Makefile use. Nothing to build.

Every failure raises :class:`BpfError` with the errno text, the step that failed, a hint
naming the missing feature, and the tail of libbpf's own log (the verifier log on a load
failure).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import platform
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Final, NamedTuple

from collector.errors import CollectorError

log = logging.getLogger("collector.kernel.libbpf")

LIBBPF_NAMES = ("libbpf.so.1", "libbpf.so")
KERNEL_BTF = Path("/sys/kernel/btf/vmlinux")

# struct bpf_prog_info (UAPI, append-only): id at offset 4, recursion_misses at 208 (since
# 5.12); 232 bytes is the size libbpf 1.1's headers know. The kernel fills what it has.
_PROG_INFO_SIZE = 232
_PROG_INFO_ID = 4
_PROG_INFO_RECURSION_MISSES = 208

# enum libbpf_print_level
_LIBBPF_WARN, _LIBBPF_INFO, _LIBBPF_DEBUG = 0, 1, 2

# BTF (include/uapi/linux/btf.h): the kinds read here, and the layout after struct btf_type
# (name_off, info, size/type: 12 bytes) for a DATASEC (btf_var_secinfo: type, offset, size)
# and an INT (one u32 whose bits 24-27 are the encoding).
_BTF_KIND_INT, _BTF_KIND_DATASEC = 1, 15
_BTF_TYPE = ctypes.c_uint32 * 3
_BTF_INT_SIGNED = 1
RODATA: Final = ".rodata"


class BpfError(CollectorError):
    """A BPF object could not be opened, loaded, attached or read."""


_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


class _Lib:
    """Prototypes of the libbpf functions we use, declared once."""

    def __init__(self) -> None:
        self.lib = _load_libbpf()
        lib = self.lib
        vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        for name, res, args in (
            ("bpf_object__open_file", vp, [cp, vp]),
            ("bpf_object__load", ci, [vp]),
            ("bpf_object__close", None, [vp]),
            ("bpf_object__next_program", vp, [vp, vp]),
            ("bpf_object__find_map_by_name", vp, [vp, cp]),
            ("bpf_program__name", cp, [vp]),
            ("bpf_program__fd", ci, [vp]),
            ("bpf_program__attach", vp, [vp]),
            ("bpf_program__attach_cgroup", vp, [vp, ci]),
            ("bpf_link__destroy", ci, [vp]),
            ("bpf_map__fd", ci, [vp]),
            ("bpf_map__max_entries", ctypes.c_uint32, [vp]),
            ("bpf_map__set_max_entries", ci, [vp, ctypes.c_uint32]),
            ("bpf_map__initial_value", vp, [vp, ctypes.POINTER(ctypes.c_size_t)]),
            ("bpf_map_lookup_elem", ci, [ci, vp, vp]),
            ("bpf_map_update_elem", ci, [ci, vp, vp, ctypes.c_uint64]),
            ("bpf_map_delete_elem", ci, [ci, vp]),
            ("bpf_map_get_next_key", ci, [ci, vp, vp]),
            ("bpf_obj_get_info_by_fd", ci, [ci, vp, ctypes.POINTER(ctypes.c_uint32)]),
            ("bpf_obj_get", ci, [cp]),
            ("bpf_map__pin", ci, [vp, cp]),
            ("bpf_link__pin", ci, [vp, cp]),
            ("bpf_prog_get_fd_by_id", ci, [ctypes.c_uint32]),
            ("libbpf_num_possible_cpus", ci, []),
            ("libbpf_set_print", vp, [_PRINT_FN]),
            ("libbpf_strerror", ci, [ci, cp, ctypes.c_size_t]),
            ("bpf_object__btf", vp, [vp]),
            ("btf__find_by_name_kind", ctypes.c_int32, [vp, cp, ctypes.c_uint32]),
            ("btf__type_by_id", vp, [vp, ctypes.c_uint32]),
            ("btf__name_by_offset", cp, [vp, ctypes.c_uint32]),
            ("btf__resolve_type", ctypes.c_int32, [vp, ctypes.c_uint32]),
        ):
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
        self.log_tail: deque[str] = deque(maxlen=60)
        self._printer = _PRINT_FN(self._on_print)  # kept referenced: libbpf holds a pointer
        self._vsnprintf = _vsnprintf()
        lib.libbpf_set_print(self._printer)

    def _on_print(self, level: int, fmt: bytes | None, args: int | None) -> int:
        text = self._format(fmt, args)
        if level <= _LIBBPF_INFO:
            for line in text.rstrip("\n").splitlines():
                self.log_tail.append(line)
        log.debug("libbpf: %s", text.rstrip("\n"))
        return 0

    def _format(self, fmt: bytes | None, args: int | None) -> str:
        if fmt is None:
            return ""
        if self._vsnprintf is None:
            return fmt.decode(errors="replace")
        buf = ctypes.create_string_buffer(4096)
        self._vsnprintf(buf, len(buf), fmt, args)
        return buf.value.decode(errors="replace")


def _load_libbpf() -> ctypes.CDLL:
    names = list(LIBBPF_NAMES)
    found = ctypes.util.find_library("bpf")
    if found:
        names.append(found)
    for name in names:
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    raise BpfError("libbpf.so.1 not found: install the libbpf1 package (apt-get install libbpf1)")


def _vsnprintf() -> Callable[..., int] | None:
    # libbpf hands its print callback a va_list. On x86-64 a va_list argument is a pointer,
    # so libc's vsnprintf can format it; elsewhere we keep the unformatted text.
    if platform.machine() != "x86_64":
        return None
    libc = ctypes.CDLL(None)
    fn = libc.vsnprintf
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
    return fn


_lib: _Lib | None = None


def _libbpf() -> _Lib:
    global _lib
    if _lib is None:
        _lib = _Lib()
    return _lib


def _failure(step: str, err: int, hint: str | None = None) -> BpfError:
    lib = _libbpf()
    name = errno.errorcode.get(err, f"libbpf error {err}")
    # libbpf_strerror also knows libbpf's own codes (4000 and up: bad ELF, relocation...).
    text = ctypes.create_string_buffer(256)
    if lib.lib.libbpf_strerror(err, text, len(text)) == 0 and text.value:
        message = text.value.decode(errors="replace")
    else:
        message = os.strerror(err)
    parts = [f"{step}: {message} ({name})"]
    if hint:
        parts.append(hint)
    if lib.log_tail:
        parts.append("libbpf said:\n  " + "\n  ".join(lib.log_tail))
    lib.log_tail.clear()
    return BpfError("\n".join(parts))


def _load_hint(err: int) -> str | None:
    if err == errno.EPERM:
        return (
            "loading BPF programs needs CAP_BPF, and CAP_PERFMON for tracing programs (or "
            "CAP_SYS_ADMIN before Linux 5.8), and a kernel not locked down against BPF"
        )
    if err in (errno.ESRCH, errno.ENOENT) and not KERNEL_BTF.exists():
        return f"{KERNEL_BTF} is missing: CO-RE needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    if err == errno.EINVAL:
        return "the verifier rejected the program (log below) or a map type is not supported"
    return None


def _attach_hint(
    section_prog: str, err: int, tracefs: Path, needs: str = "CAP_PERFMON"
) -> str | None:
    """``needs``: tracepoints are perf events (CAP_PERFMON); cgroup programs are networking
    programs (CAP_NET_ADMIN)."""
    if err == errno.ENOENT:
        return (
            f"program {section_prog}: the tracepoint was not found. Is tracefs mounted at "
            f"{tracefs}? (mount -t tracefs tracefs {tracefs}; the collector does this when "
            "allowed) Otherwise this kernel lacks the tracepoint."
        )
    if err in (errno.EPERM, errno.EACCES):
        return f"program {section_prog}: attaching needs {needs}"
    if err == errno.EOPNOTSUPP:
        return f"program {section_prog}: this kernel does not support this attach type"
    return None


class RodataVariable(NamedTuple):
    """A ``const volatile`` global of the object's ``.rodata``, as its BTF describes it."""

    offset: int
    size: int
    signed: bool


class BpfObject:
    """One loaded BPF object file with all its programs attached.

    Use as a context manager, or call :meth:`close`: it detaches every program and frees
    every map, also after a partial failure.
    """

    def __init__(
        self,
        path: Path,
        map_max_entries: dict[str, int] | None = None,
        tracefs: Path = Path("/sys/kernel/tracing"),
        rodata: Mapping[str, int] | None = None,
    ) -> None:
        """``rodata``: values of the object's ``const volatile`` load-time knobs (``targ_*``
        globals) by name, set before the programs are verified, as a skeleton would."""
        self._lib = _libbpf()
        self._obj: int | None = None
        self._links: list[int] = []
        self._link_names: list[str] = []  # the program of each link, same order
        self._tracefs = tracefs
        if not path.is_file():
            raise BpfError(f"BPF object {path} not found: build it with `make -C bpf`")
        self._lib.log_tail.clear()
        obj = self._lib.lib.bpf_object__open_file(str(path).encode(), None)
        if not obj:
            raise _failure(f"opening {path}", ctypes.get_errno())
        self._obj = obj
        try:
            for name, entries in (map_max_entries or {}).items():
                rc = self._lib.lib.bpf_map__set_max_entries(self._map(name), entries)
                if rc < 0:
                    raise _failure(f"sizing map {name} to {entries}", -rc)
            if rodata is not None:
                self._set_rodata(rodata)
            rc = self._lib.lib.bpf_object__load(obj)
            if rc < 0:
                raise _failure(f"loading {path}", -rc, _load_hint(-rc))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    def rodata_variables(self) -> dict[str, RodataVariable]:
        """The ``.rodata`` globals by name, from the object's BTF (libbpf lays out the
        section when it opens the object: the offsets are those the programs read)."""
        lib = self._lib.lib
        btf = lib.bpf_object__btf(self._require())
        if not btf:
            raise BpfError("the BPF object has no BTF: build it with -g (make -C bpf)")
        sec = lib.btf__find_by_name_kind(btf, RODATA.encode(), _BTF_KIND_DATASEC)
        if sec < 0:
            return {}  # no const volatile globals at all
        address = lib.btf__type_by_id(btf, sec)
        vlen = _BTF_TYPE.from_address(address)[1] & 0xFFFF
        infos = (ctypes.c_uint32 * (3 * vlen)).from_address(address + ctypes.sizeof(_BTF_TYPE))
        found: dict[str, RodataVariable] = {}
        for i in range(0, len(infos), 3):
            var_id, offset, size = infos[i], infos[i + 1], infos[i + 2]
            var = _BTF_TYPE.from_address(lib.btf__type_by_id(btf, var_id))
            name = (lib.btf__name_by_offset(btf, var[0]) or b"").decode()
            # The variable's type through const, volatile and typedefs: signed or not.
            resolved = lib.btf__resolve_type(btf, var[2])
            signed = False
            if resolved > 0:
                base = lib.btf__type_by_id(btf, resolved)
                if (_BTF_TYPE.from_address(base)[1] >> 24) & 0x1F == _BTF_KIND_INT:
                    encoding = ctypes.c_uint32.from_address(base + ctypes.sizeof(_BTF_TYPE))
                    signed = bool((encoding.value >> 24) & _BTF_INT_SIGNED)
            found[name] = RodataVariable(offset, size, signed)
        return found

    def _rodata_data(self) -> tuple[int, int]:
        size = ctypes.c_size_t(0)
        ptr = self._lib.lib.bpf_map__initial_value(self._map(RODATA), ctypes.byref(size))
        if not ptr:
            raise BpfError("the object's .rodata has no initial value to set")
        return int(ptr), size.value

    def _set_rodata(self, values: Mapping[str, int]) -> None:
        variables = self.rodata_variables()
        unknown = sorted(set(values) - set(variables))
        if unknown:
            known = ", ".join(sorted(variables)) or "none"
            names = ", ".join(unknown)
            raise BpfError(f"no load-time knob {names} in the object (it has: {known})")
        ptr, size = self._rodata_data()
        for name, value in values.items():
            var = variables[name]
            if var.offset + var.size > size:
                raise BpfError(f"{name} lies outside .rodata ({size} bytes)")
            try:
                raw = int(value).to_bytes(var.size, "little", signed=var.signed)
            except OverflowError:
                raise BpfError(f"{name} = {value} does not fit in {var.size} bytes") from None
            ctypes.memmove(ptr + var.offset, raw, var.size)

    def rodata_value(self, name: str) -> int:
        """A ``.rodata`` global's value as the kernel holds it (read from the loaded map)."""
        var = self.rodata_variables()[name]
        _ptr, size = self._rodata_data()
        key, value = ctypes.c_uint32(0), ctypes.create_string_buffer(size)
        rc = self._lib.lib.bpf_map_lookup_elem(self.map_fd(RODATA), ctypes.byref(key), value)
        if rc < 0:
            raise _failure("reading .rodata", ctypes.get_errno())
        raw = value.raw[var.offset : var.offset + var.size]
        return int.from_bytes(raw, "little", signed=var.signed)

    def _require(self) -> int:
        if self._obj is None:
            raise BpfError("BPF object is closed")
        return self._obj

    def _programs(self) -> list[int]:
        obj = self._require()
        progs: list[int] = []
        prog = self._lib.lib.bpf_object__next_program(obj, None)
        while prog:
            progs.append(prog)
            prog = self._lib.lib.bpf_object__next_program(obj, prog)
        return progs

    def _map(self, name: str) -> int:
        found = self._lib.lib.bpf_object__find_map_by_name(self._require(), name.encode())
        if not found:
            raise BpfError(f"map {name!r} is not in the BPF object (wrong object file?)")
        return int(found)

    def program_names(self) -> list[str]:
        return [(self._lib.lib.bpf_program__name(p) or b"?").decode() for p in self._programs()]

    def attach_all(self) -> None:
        """Attach every program as its ELF section says (auto-attach)."""
        try:
            for prog in self._programs():
                name = (self._lib.lib.bpf_program__name(prog) or b"?").decode()
                link = self._lib.lib.bpf_program__attach(prog)
                if not link:
                    err = ctypes.get_errno()
                    raise _failure(f"attaching {name}", err, _attach_hint(name, err, self._tracefs))
                self._links.append(link)
                self._link_names.append(name)
        except BaseException:
            self.detach()
            raise

    def attach_all_to_cgroup(self, cgroup_dir: Path) -> None:
        """Attach every program (cgroup_skb, sockops...) to ``cgroup_dir`` through BPF links.

        A link lives as long as its descriptor: closing this object, or the process dying,
        detaches the programs; nothing stays pinned. Links coexist with other programs
        attached to the same cgroup (multi-attach)."""
        try:
            fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise BpfError(f"cannot open cgroup {cgroup_dir}: {exc.strerror}") from exc
        try:
            for prog in self._programs():
                name = (self._lib.lib.bpf_program__name(prog) or b"?").decode()
                link = self._lib.lib.bpf_program__attach_cgroup(prog, fd)
                if not link:
                    err = ctypes.get_errno()
                    raise _failure(
                        f"attaching {name} to cgroup {cgroup_dir}",
                        err,
                        _attach_hint(name, err, self._tracefs, needs="CAP_NET_ADMIN"),
                    )
                self._links.append(link)
                self._link_names.append(name)
        except BaseException:
            self.detach()
            raise
        finally:
            os.close(fd)  # each link holds its own reference to the cgroup

    def map_update(self, name: str, key: bytes, value: bytes) -> None:
        fd = self.map_fd(name)
        if self._lib.lib.bpf_map_update_elem(fd, key, value, 0) < 0:
            raise _failure(f"updating map {name}", ctypes.get_errno())

    def map_drain(self, name: str, key_size: int, value_size: int) -> list[tuple[bytes, bytes]]:
        """Every (key, value) of a hash map, deleting them. Only safe on a map that no
        program writes meanwhile (udpflow's inactive generation)."""
        fd = self.map_fd(name)
        # Walked whole before deleting: a delete under get_next_key restarts the walk.
        out = map_items(fd, key_size, value_size)
        for key, _value in out:
            map_delete(fd, key)
        return out

    def detach(self) -> None:
        """Destroy our links. A pinned link stays attached: its pin holds the kernel's
        reference (only removing the pin, or the last descriptor with it, detaches)."""
        while self._links:
            self._lib.lib.bpf_link__destroy(self._links.pop())
        self._link_names.clear()

    def close(self) -> None:
        self.detach()
        if self._obj is not None:
            self._lib.lib.bpf_object__close(self._obj)
            self._obj = None

    @property
    def closed(self) -> bool:
        return self._obj is None

    def map_fd(self, name: str) -> int:
        fd = int(self._lib.lib.bpf_map__fd(self._map(name)))
        if fd < 0:
            raise BpfError(f"map {name!r} has no file descriptor (object not loaded?)")
        return fd

    def map_max_entries(self, name: str) -> int:
        return int(self._lib.lib.bpf_map__max_entries(self._map(name)))

    def percpu_u64_sums(self, name: str, count: int) -> list[int]:
        """Sum a per-CPU array of u64 over CPUs, for indexes 0..count-1."""
        return percpu_u64_sums(self.map_fd(name), name, count)

    def _prog_info(self, prog: int) -> bytes | None:
        fd = int(self._lib.lib.bpf_program__fd(prog))
        if fd < 0:
            return None
        return obj_info(fd, _PROG_INFO_SIZE, "program")

    def program_ids(self) -> list[int]:
        """Kernel ids of the loaded programs (as ``bpftool prog show id`` takes them)."""
        ids: list[int] = []
        for prog in self._programs():
            info = self._prog_info(prog)
            if info is not None:
                ids.append(int.from_bytes(info[_PROG_INFO_ID : _PROG_INFO_ID + 4], "little"))
        return ids

    def recursion_misses(self) -> int:
        """Runs the kernel skipped because a BPF program was already running on that CPU.

        These are events lost before our program ran: no counter of ours can see them.
        """
        infos = (self._prog_info(prog) for prog in self._programs())
        return sum(prog_recursion_misses(info) for info in infos if info is not None)

    def pin(self, directory: Path, maps: tuple[str, ...]) -> list[Path]:
        """Pin ``maps`` and every attached link under ``directory`` (on a bpffs).

        A pinned link keeps its program attached after this object is closed or the process
        dies, and a pinned map keeps its contents (the ring buffer with its consumer
        position): what a restarted collector re-opens. Returns the paths made."""
        made: list[Path] = []
        for name in maps:
            path = directory / name
            rc = self._lib.lib.bpf_map__pin(self._map(name), str(path).encode())
            if rc < 0:
                raise _failure(f"pinning map {name} at {path}", -rc)
            made.append(path)
        for prog_name, link in zip(self._link_names, self._links, strict=True):
            path = directory / f"link_{prog_name}"
            rc = self._lib.lib.bpf_link__pin(link, str(path).encode())
            if rc < 0:
                raise _failure(f"pinning the link of {prog_name} at {path}", -rc)
            made.append(path)
        return made


# struct bpf_map_info: type, id, key_size, value_size, max_entries (u32 each), ...
_MAP_INFO_SIZE = 88
_MAP_INFO_MAX_ENTRIES = 16
# struct bpf_link_info: type, id, prog_id (u32 each), then a union by link type.
_LINK_INFO_SIZE = 64
_LINK_INFO_PROG_ID = 8


def obj_get(path: Path) -> int:
    """A new descriptor of the BPF object (map, link, program) pinned at ``path``."""
    fd = int(_libbpf().lib.bpf_obj_get(str(path).encode()))
    if fd < 0:
        raise _failure(f"opening pinned {path}", -fd)
    return fd


def obj_info(fd: int, size: int, what: str) -> bytes:
    """The kernel's info struct of a BPF map, program or link (as much as it fills)."""
    info = ctypes.create_string_buffer(size)
    length = ctypes.c_uint32(size)
    if _libbpf().lib.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(length)) < 0:
        raise _failure(f"reading {what} info", ctypes.get_errno())
    return info.raw[: length.value]


def _u32(info: bytes, offset: int) -> int:
    return int.from_bytes(info[offset : offset + 4], "little")


def map_max_entries(fd: int) -> int:
    return _u32(obj_info(fd, _MAP_INFO_SIZE, "map"), _MAP_INFO_MAX_ENTRIES)


def link_prog_fd(link_fd: int) -> int:
    """A descriptor of the program a link attaches."""
    prog_id = _u32(obj_info(link_fd, _LINK_INFO_SIZE, "link"), _LINK_INFO_PROG_ID)
    fd = int(_libbpf().lib.bpf_prog_get_fd_by_id(prog_id))
    if fd < 0:
        raise _failure(f"opening program id {prog_id}", -fd)
    return fd


def prog_info(fd: int) -> bytes:
    return obj_info(fd, _PROG_INFO_SIZE, "program")


def prog_id(info: bytes) -> int:
    return _u32(info, _PROG_INFO_ID)


def prog_recursion_misses(info: bytes) -> int:
    end = _PROG_INFO_RECURSION_MISSES + 8
    if len(info) < end:
        return 0
    return int.from_bytes(info[_PROG_INFO_RECURSION_MISSES:end], "little")


def percpu_u64_sums(fd: int, name: str, count: int) -> list[int]:
    """Sum a per-CPU array map of u64 over CPUs, for indexes 0..count-1."""
    lib = _libbpf().lib
    cpus = int(lib.libbpf_num_possible_cpus())
    if cpus <= 0:
        raise _failure("counting possible CPUs", -cpus)
    values = (ctypes.c_uint64 * cpus)()
    sums: list[int] = []
    for index in range(count):
        key = ctypes.c_uint32(index)
        if lib.bpf_map_lookup_elem(fd, ctypes.byref(key), values) < 0:
            raise _failure(f"reading {name}[{index}]", ctypes.get_errno())
        sums.append(sum(values))
    return sums


def count_keys(fd: int, key_size: int) -> int:
    """How many keys a hash map holds now (walked, not deleted)."""
    return len(map_keys(fd, key_size))


def map_keys(fd: int, key_size: int) -> list[bytes]:
    """Every key a hash map holds now (keys programs add or delete meanwhile may or may
    not be in it)."""
    lib = _libbpf().lib
    key = ctypes.create_string_buffer(key_size)
    prev: ctypes.Array[ctypes.c_char] | None = None
    keys: list[bytes] = []
    while lib.bpf_map_get_next_key(fd, prev, key) == 0:
        keys.append(key.raw)
        prev = ctypes.create_string_buffer(key.raw, key_size)
    return keys


def map_update(fd: int, name: str, key: bytes, value: bytes) -> None:
    if _libbpf().lib.bpf_map_update_elem(fd, key, value, 0) < 0:
        raise _failure(f"updating map {name}", ctypes.get_errno())


def map_items(fd: int, key_size: int, value_size: int) -> list[tuple[bytes, bytes]]:
    """Every (key, value) a hash map holds now (walked, not deleted; a key deleted between
    the walk and its lookup is left out)."""
    lib = _libbpf().lib
    value = ctypes.create_string_buffer(value_size)
    out: list[tuple[bytes, bytes]] = []
    for key in map_keys(fd, key_size):
        if lib.bpf_map_lookup_elem(fd, key, value) == 0:
            out.append((key, value.raw))
    return out


def map_delete(fd: int, key: bytes) -> bool:
    """Delete one key; False if it was not there (a program deleted it first)."""
    return int(_libbpf().lib.bpf_map_delete_elem(fd, key)) == 0
