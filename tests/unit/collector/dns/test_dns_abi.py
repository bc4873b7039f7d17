"""collector/dns/abi.py must mirror bpf/dns.h exactly: parse the header and compare."""

from __future__ import annotations

import re
import struct
from pathlib import Path

from collector.dns import abi

HEADER = Path(__file__).resolve().parents[4] / "bpf" / "dns.h"
_C = {"__u64": "Q", "__u32": "I", "__u16": "H", "__u8": "B"}
_SIZES = {"DNS_ADDR_LEN": 16, "DNS_PAYLOAD_MAX": 512, "DNS_QUERY_MAX": 256}


def _text() -> str:
    return re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)


def _enum(name: str) -> dict[str, int]:
    body = re.search(rf"enum {name} \{{(.*?)\}};", _text(), re.S)
    assert body, f"enum {name} not in {HEADER}"
    items = [i.strip() for i in body.group(1).split(",") if i.strip()]
    return {k.strip(): int(v) for k, _, v in (i.partition("=") for i in items)}


def _format(struct_name: str) -> str:
    body = re.search(rf"struct {struct_name} \{{(.*?)\}};", _text(), re.S)
    assert body, f"struct {struct_name} not found"
    fmt = "<"
    for decl in (d.strip() for d in body.group(1).split(";")):
        if not decl:
            continue
        found = re.fullmatch(r"(__u64|__u32|__u16|__u8)\s+(\w+)(?:\[(\w+)\])?", decl)
        assert found, f"cannot parse {decl!r}"
        ctype, name, count = found.groups()
        if count is None:
            fmt += _C[ctype]
            continue
        n = int(count) if count.isdigit() else _SIZES[count]
        code = _C[ctype]
        if name.startswith("_pad"):
            fmt += f"{n * struct.calcsize(code)}x"
        else:
            fmt += f"{n}{'s' if code == 'B' else code}"
    return fmt


def test_sizes_match_header() -> None:
    defines = dict(re.findall(r"#define (DNS_\w+) (\d+)", _text()))
    assert {k: int(v) for k, v in defines.items()} == _SIZES
    assert _SIZES["DNS_PAYLOAD_MAX"] == abi.PAYLOAD_MAX
    assert _SIZES["DNS_QUERY_MAX"] == abi.QUERY_MAX


def test_event_layout_matches_header() -> None:
    assert _format("dns_event") == abi.EVENT_FORMAT
    assert struct.calcsize(abi.EVENT_FORMAT) == abi.EVENT_SIZE == 600


def test_held_query_layouts_match_header() -> None:
    assert _format("dns_query_side") == abi.QUERY_SIDE_FORMAT
    assert struct.calcsize(abi.QUERY_SIDE_FORMAT) == abi.QUERY_SIDE_SIZE == 336
    assert _format("dns_pending_key") == abi.PENDING_KEY.format
    body = re.search(r"struct dns_pair_event \{(.*?)\};", _text(), re.S)
    assert body and body.group(1).split() == [
        "struct",
        "dns_event",
        "response;",
        "struct",
        "dns_query_side",
        "query;",
    ]
    assert abi.PAIR_SIZE == 936


def test_load_time_knobs_are_targ_globals() -> None:
    # Set by name through the object's BTF (collector/dns/source.py, collector/kernel/libbpf.py).
    source = re.sub(r"/\*.*?\*/", "", HEADER.with_name("dns.bpf.c").read_text(), flags=re.S)
    found = re.findall(r"const volatile (\w+) (targ_\w+) =", source)
    assert found == [("__u16", "targ_port")]
    assert "targs" not in _text()  # no struct at a .rodata offset


def test_enums_match_header() -> None:
    assert _enum("dns_direction") == {
        "DNS_DIR_EGRESS": abi.DIR_EGRESS,
        "DNS_DIR_INGRESS": abi.DIR_INGRESS,
    }
    counters = _enum("dns_counter")
    assert counters.pop("DNS_CTR_MAX") == len(abi.COUNTER_NAMES)
    assert [k.removeprefix("DNS_CTR_").lower() for k in counters] == list(abi.COUNTER_NAMES)
    assert list(counters.values()) == list(range(len(abi.COUNTER_NAMES)))


def test_decode_event() -> None:
    payload = b"\x12\x34" + bytes(10)
    raw = abi.EVENT.pack(
        5_000,
        77,
        bytes([10, 0, 0, 2]) + bytes(12),
        bytes([10, 0, 0, 3]) + bytes(12),
        bytes([10, 96, 0, 10]) + bytes(12),
        12,
        12,
        40000,
        53,
        53,
        abi.AF_INET,
        abi.DIR_EGRESS,
        abi.IPPROTO_UDP,
        payload,
    )
    p = abi.decode(raw, 1_000)
    assert (p.time_ns, p.mono_ns, p.cgroup_id) == (6_000, 5_000, 77)
    assert p.local == ("10.0.0.2", 40000) and p.remote == ("10.0.0.3", 53)
    assert (p.sock_peer_addr, p.sock_peer_port) == ("10.96.0.10", 53)
    assert p.payload == payload and not p.clipped and p.transport == "udp" and p.egress
