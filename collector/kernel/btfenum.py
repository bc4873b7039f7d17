"""Names of a kernel enum's values, from the running kernel's BTF (through libbpf).

Enum numbers are not stable between kernels (``enum skb_drop_reason`` gains and reorders
members), so a number read by a BPF program is named from the kernel it ran on, never from
the vmlinux.h it was compiled against.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Final

from collector.kernel.libbpf import BpfError, _libbpf

BTF_KIND_ENUM: Final = 6
BTF_KIND_ENUM64: Final = 19
# struct btf_type: name_off, info (vlen in the low 16 bits, kind in bits 24-28), size.
_TYPE = struct.Struct("<III")
_ENUM = struct.Struct("<Ii")  # struct btf_enum: name_off, val
_ENUM64 = struct.Struct("<III")  # struct btf_enum64: name_off, val_lo32, val_hi32

_declared = False


def _lib() -> ctypes.CDLL:
    global _declared
    lib = _libbpf().lib
    if not _declared:
        vp, cp, u32 = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32
        for name, res, args in (
            ("btf__load_vmlinux_btf", vp, []),
            ("btf__find_by_name_kind", ctypes.c_int32, [vp, cp, u32]),
            ("btf__type_by_id", vp, [vp, u32]),
            ("btf__name_by_offset", cp, [vp, u32]),
            ("btf__free", None, [vp]),
        ):
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
        _declared = True
    return lib


def kernel_enum(name: str, strip_prefix: str = "") -> dict[int, str]:
    """Value -> member name of ``enum <name>`` in the running kernel (``strip_prefix`` taken
    off each name). Raises BpfError when the kernel has no BTF or no such enum."""
    lib = _lib()
    btf = lib.btf__load_vmlinux_btf()
    if not btf:
        raise BpfError(
            f"cannot read the kernel's BTF (errno {ctypes.get_errno()}): enum {name} "
            "needs CONFIG_DEBUG_INFO_BTF=y (/sys/kernel/btf/vmlinux)"
        )
    try:
        kind, type_id = BTF_KIND_ENUM, -1
        for kind in (BTF_KIND_ENUM, BTF_KIND_ENUM64):
            type_id = lib.btf__find_by_name_kind(btf, name.encode(), kind)
            if type_id > 0:
                break
        if type_id <= 0:
            raise BpfError(f"the kernel's BTF has no enum {name}")
        entry = _ENUM if kind == BTF_KIND_ENUM else _ENUM64
        ptr = lib.btf__type_by_id(btf, type_id)
        _name_off, info, _size = _TYPE.unpack(ctypes.string_at(ptr, _TYPE.size))
        vlen = info & 0xFFFF
        members = ctypes.string_at(ptr + _TYPE.size, vlen * entry.size)
        names: dict[int, str] = {}
        for i in range(vlen):
            fields = entry.unpack_from(members, i * entry.size)
            value = fields[1] if kind == BTF_KIND_ENUM else fields[1] | fields[2] << 32
            raw = (lib.btf__name_by_offset(btf, fields[0]) or b"").decode()
            names.setdefault(value, raw.removeprefix(strip_prefix))
        return names
    finally:
        lib.btf__free(btf)
