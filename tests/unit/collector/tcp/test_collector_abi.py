"""collector/tcp/events.py must mirror bpf/tcpconn.h exactly: parse the header and compare."""

from __future__ import annotations

import re
import struct
from pathlib import Path

from collector.tcp import events

HEADER = Path(__file__).resolve().parents[4] / "bpf" / "tcpconn.h"

_C_TO_STRUCT = {"__u64": "Q", "__u32": "I", "__s32": "i", "__u16": "H", "__u8": "B", "char": "s"}
_SIZES = {"TCPCONN_COMM_LEN": 16, "TCPCONN_ADDR_LEN": 16}


def _header() -> str:
    return HEADER.read_text()


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def _enum(name: str) -> dict[str, int]:
    body = re.search(rf"enum {name} \{{(.*?)\}};", _strip_comments(_header()), re.S)
    assert body, f"enum {name} not found in {HEADER}"
    values: dict[str, int] = {}
    for item in body.group(1).split(","):
        item = item.strip()
        if not item:
            continue
        key, _, expr = item.partition("=")
        values[key.strip()] = _value(expr.strip())
    return values


def _value(expr: str) -> int:
    shift = re.fullmatch(r"1 << (\d+)", expr)
    return 1 << int(shift.group(1)) if shift else int(expr)


def _struct_format() -> str:
    body = re.search(r"struct tcpconn_event \{(.*?)\};", _strip_comments(_header()), re.S)
    assert body, "struct tcpconn_event not found"
    fmt = "<"
    for decl in body.group(1).split(";"):
        decl = decl.strip()
        if not decl:
            continue
        found = re.fullmatch(r"(__u64|__u32|__s32|__u16|__u8|char)\s+(\w+)(?:\[(\w+)\])?", decl)
        assert found, f"cannot parse field {decl!r}"
        ctype, name, count = found.groups()
        code = _C_TO_STRUCT[ctype]
        if count is None:
            fmt += code
            continue
        n = int(count) if count.isdigit() else _SIZES[count]
        fmt += f"{n}x" if name.startswith("_pad") else f"{n}{'s' if code in 'Bs' else code}"
    return fmt


def test_event_layout_matches_header() -> None:
    assert _struct_format() == events.EVENT_FORMAT
    assert struct.calcsize(_struct_format()) == events.EVENT_SIZE == 152
    assert events.EVENT_SIZE % 8 == 0


def test_roles_match_header() -> None:
    roles = _enum("tcpconn_role")
    assert roles == {"TCPCONN_ROLE_UNKNOWN": 0, "TCPCONN_ROLE_CLIENT": 1, "TCPCONN_ROLE_SERVER": 2}
    assert events.ROLES == {0: "unknown", 1: "client", 2: "server"}


def test_flags_match_header() -> None:
    assert _enum("tcpconn_flag") == {
        "TCPCONN_F_ESTABLISHED": events.F_ESTABLISHED,
        "TCPCONN_F_START_UNKNOWN": events.F_START_UNKNOWN,
        "TCPCONN_F_FIN_ACKED": events.F_FIN_ACKED,
        "TCPCONN_F_FIN_RECEIVED": events.F_FIN_RECEIVED,
        "TCPCONN_F_PID_AT_CLOSE": events.F_PID_AT_CLOSE,
    }


def test_counters_match_header_in_index_order() -> None:
    counters = _enum("tcpconn_counter")
    assert counters.pop("TCPCONN_CTR_MAX") == len(events.COUNTER_NAMES)
    by_index = [name for name, _ in sorted(counters.items(), key=lambda kv: kv[1])]
    expected = ["TCPCONN_CTR_" + n.upper() for n in events.COUNTER_NAMES]
    assert by_index == expected
    assert sorted(counters.values()) == list(range(len(expected)))


def test_kinds_match_header() -> None:
    assert _enum("tcpconn_kind") == {
        "TCPCONN_KIND_FINAL": events.KIND_FINAL,
        "TCPCONN_KIND_INTERIM": events.KIND_INTERIM,
    }


def test_load_time_knobs_are_targ_globals() -> None:
    # Set by name through the object's BTF (collector/tcp/source.py, collector/kernel/libbpf.py).
    assert _targs(HEADER.with_name("tcpconn.bpf.c")) == {
        "targ_interim_ns": "__u64",
        "targ_wakeup_bytes": "__u64",
    }
    assert "targs" not in _strip_comments(_header())  # no struct at a .rodata offset


def _targs(source: Path) -> dict[str, str]:
    text = _strip_comments(source.read_text())
    return dict((n, t) for t, n in re.findall(r"const volatile (\w+) (targ_\w+) =", text))
