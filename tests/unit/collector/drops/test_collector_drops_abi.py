"""collector/drops/reporter.py must mirror bpf/drops.h; decoding a map entry; netns attribution."""

from __future__ import annotations

import re
import socket
import struct
from pathlib import Path

from collector.drops import reporter as drops
from collector.tcp.events import Decoder

HEADER = Path(__file__).resolve().parents[4] / "bpf" / "drops.h"
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
        if field == "_pad":
            fmt += f"{count}x"
        elif count is not None:
            fmt += "16s"
        else:
            fmt += _CODES[ctype]
    return fmt


def test_key_and_value_layouts_match_header() -> None:
    assert _format("drops_key") == drops.KEY_FORMAT
    assert _format("drops_value") == drops.VALUE_FORMAT
    assert struct.calcsize(drops.KEY_FORMAT) == drops.KEY_SIZE == 56


def test_counters_match_header() -> None:
    names = [item.split("=")[0].strip() for item in _body("enum drops_counter").split(",")]
    names = [n for n in names if n and n != "DROPS_CTR_MAX"]
    assert names == ["DROPS_CTR_" + n.upper() for n in drops.COUNTER_NAMES]


def test_decode_drop_with_and_without_an_ip_header() -> None:
    key = drops.KEY.pack(
        9,
        4026531840,
        12,
        socket.inet_aton("10.0.0.1") + bytes(12),
        socket.inet_aton("10.0.0.2") + bytes(12),
        2,
        6,
    )
    drop = drops.decode_drop(Decoder(), key, drops.VALUE.pack(3, 180))
    assert (drop.cgroup_id, drop.netns_ino, drop.reason_code) == (9, 4026531840, 12)
    assert (drop.family, drop.ip_proto, drop.src_addr, drop.dst_addr) == (
        4,
        6,
        "10.0.0.1",
        "10.0.0.2",
    )
    assert (drop.packets, drop.bytes) == (3, 180)
    bare = drops.decode_drop(
        Decoder(), drops.KEY.pack(0, 0, 2, bytes(16), bytes(16), 0, 0), drops.VALUE.pack(1, 60)
    )
    assert (bare.family, bare.src_addr, bare.dst_addr) == (0, None, None)


def test_netns_pods_rescans_on_a_miss_at_most_once_per_interval() -> None:
    now = [0.0]
    scans: list[float] = []
    pod = "/kubepods/besteffort/pod1234abcd-0000-0000-0000-000000000001/" + "c" * 64

    def scan() -> dict[int, str]:
        scans.append(now[0])
        return {7: pod} if now[0] >= 5 else {}

    pods = drops.NetnsPods(10.0, scan, lambda: now[0])
    assert pods.resolve(7).pod_uid is None and len(scans) == 1
    now[0] = 5.0
    assert pods.resolve(7).pod_uid is None and len(scans) == 1  # not before the interval
    now[0] = 10.0
    found = pods.resolve(7)
    assert found.pod_uid == "1234abcd-0000-0000-0000-000000000001" and len(scans) == 2
    assert found.container_id == "c" * 64
    assert pods.resolve(7).path == pod and len(scans) == 2  # cached
