"""collector/udp/flows.py must mirror bpf/udpflow.h; and decoding a map entry."""

from __future__ import annotations

import re
import socket
import struct
from pathlib import Path

from collector.tcp.events import Decoder
from collector.udp import flows as udp

HEADER = Path(__file__).resolve().parents[4] / "bpf" / "udpflow.h"
_CODES = {"__u64": "Q", "__u32": "I", "__u16": "H", "__u8": "B"}


def _body(name: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    found = re.search(rf"{name} \{{(.*?)\}};", text, re.S)
    assert found, f"{name} not in {HEADER}"
    return found.group(1)


def _format(name: str) -> str:
    fmt = "<"
    for decl in (d.strip() for d in _body(f"struct {name}").split(";")):
        if not decl:
            continue
        found = re.fullmatch(r"(__u64|__u32|__u16|__u8)\s+(\w+)(?:\[(\w+)\])?", decl)
        assert found, decl
        ctype, field, count = found.groups()
        if count is None:
            fmt += "2x" if field == "_pad" and ctype == "__u16" else _CODES[ctype]
        else:
            fmt += "16s"
    return fmt


def test_key_and_value_layouts_match_header() -> None:
    assert _format("udpflow_key") == udp.KEY_FORMAT
    assert _format("udpflow_value") == udp.VALUE_FORMAT
    assert struct.calcsize(udp.KEY_FORMAT) == udp.KEY_SIZE == 48


def test_counters_match_header() -> None:
    names = [item.split("=")[0].strip() for item in _body("enum udpflow_counter").split(",")]
    names = [n for n in names if n and n != "UDPFLOW_CTR_MAX"]
    assert names == ["UDPFLOW_CTR_" + n.upper() for n in udp.COUNTER_NAMES]


def test_decode_flow() -> None:
    key = udp.KEY.pack(
        77,
        socket.inet_aton("10.0.0.1") + bytes(12),
        socket.inet_aton("10.0.0.2") + bytes(12),
        5353,
        53,
        2,
    )
    flow = udp.decode_flow(Decoder(), key, udp.VALUE.pack(100, 2, 300, 3))
    assert (flow.local_addr, flow.local_port, flow.remote_addr, flow.remote_port) == (
        "10.0.0.1",
        5353,
        "10.0.0.2",
        53,
    )
    assert (flow.bytes_out, flow.packets_out, flow.bytes_in, flow.packets_in) == (100, 2, 300, 3)
    assert flow.cgroup_id == 77 and flow.family == 4
