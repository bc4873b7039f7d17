"""top's paths view: path health records merged as a reader must, the namespace filter
(paths are not namespaced), the columns, their sort and their 80-column fit."""

from __future__ import annotations

from consumers_records import T0, S, health
from rich.console import Console

from consumers.rollup import Board
from consumers.top.keys import press
from consumers.top.screen import ViewState, screen
from consumers.top.views import VIEWS, count_text, host_text, ms_text, rate_text, table, width
from processors.core.sketch import sketch_of

PATHS = next(v for v in VIEWS if v.name == "paths")
SHOP = "shop/Deployment/fe -> shop/Deployment/db"
BILLING = "billing/Deployment/api -> billing/Deployment/ledger"


def test_paths_sum_windows_and_partitions_once_per_id_with_merged_rtt() -> None:
    board = Board()
    first = health(
        "a",
        "zone",
        "zone-a",
        "zone-b",
        conns=10,
        failures={"refused": 2},
        resets=1,
        syn=3,
        retrans=5,
        segs=100,
        rtts_us=[1000.0] * 10,
    )
    for r in (
        first,
        first,  # republished window: dropped
        health(
            "b",
            "zone",
            "zone-a",
            "zone-b",
            conns=6,
            failures={"connect_timeout": 1},
            syn=2,
            retrans=1,
            segs=300,
            rtts_us=[50_000.0] * 6,
            partition=1,
        ),
        health(
            "c",
            "zone",
            "zone-a",
            "zone-b",
            conns=4,
            segs=0,
            rtts_us=[2000.0] * 4,
            start_ns=T0 + 10 * S,
        ),  # the next window
        health("d", "node", "zone-a", "zone-b", conns=1, rtts_us=[9.0]),  # same names, node
    ):
        board.add(r)
    assert board.duplicates == 1
    rows = {(r.scope, r.source, r.destination): r for r in board.paths()}
    assert set(rows) == {("zone", "zone-a", "zone-b"), ("node", "zone-a", "zone-b")}
    z = rows[("zone", "zone-a", "zone-b")]
    assert (z.connections, z.failed, z.resets, z.syn_retransmits, z.connect_timeouts) == (
        20,
        3,
        1,
        5,
        1,
    )
    assert z.failures == {"refused": 2, "connect_timeout": 1}
    assert z.retransmission_rate == 6 / 400  # segments summed, never rates averaged
    merged = sketch_of([1000.0] * 10 + [50_000.0] * 6 + [2000.0] * 4)
    assert z.rtt_p99_ms == (merged.quantile(0.99) or 0) / 1000
    assert z.rtt_p50_ms == (merged.quantile(0.5) or 0) / 1000
    assert z.rtt_p50_ms is not None and z.rtt_p50_ms < 3 < 40 < z.rtt_p99_ms
    board.prune(T0 + 10 * S)  # windows ending by then are gone: only "c" is left
    (left,) = [r for r in board.paths() if r.scope == "zone"]
    assert left.connections == 4 and left.retransmission_rate is None


def test_a_namespace_shows_the_paths_it_used_with_all_their_traffic() -> None:
    board = Board()
    board.add(health("a", "node", "n1", "n2", conns=10, services=(SHOP,)))
    board.add(health("b", "node", "n1", "n2", conns=7, services=(BILLING,), partition=1))
    board.add(health("c", "node", "n3", "n4", conns=5, services=(BILLING,)))
    assert {(r.source, r.connections) for r in board.paths("shop")} == {("n1", 17)}
    assert {(r.source, r.connections) for r in board.paths("billing")} == {("n1", 17), ("n3", 5)}
    assert board.paths("payments") == []
    assert "all namespaces" in PATHS.title


def test_paths_view_columns_and_sort() -> None:
    board = Board()
    board.add(
        health(
            "a",
            "zone",
            "zone-a",
            "zone-b",
            conns=16,
            failures={"refused": 4},
            syn=2,
            retrans=3,
            segs=1000,
            rtts_us=[80.0] * 16,
        )
    )
    board.add(health("b", "node", "node-a1", "node-b1", conns=8, rtts_us=[300.0] * 8))
    board.add(health("c", "node", "node-a1", "node-a1", conns=3, failures={"refused": 3}))
    headers, rows = table(PATHS, board, None, PATHS.sort, True)
    assert headers == [
        "scope",
        "from",
        "to",
        "conns",
        "fail",
        "synrt",
        "retx%",
        "p50ms",
        "p99ms",
        "rst",
    ]
    assert [r[:3] for r in rows] == [
        ["node", "node-a1", "node-b1"],
        ["zone", "zone-a", "zone-b"],
        ["node", "node-a1", "node-a1"],
    ]  # no RTT: last
    z = rows[1]
    assert z[3:7] == ["16", "4", "2", "0.30%"] and z[9] == "0"
    assert rows[2][7:9] == ["-", "-"]
    _, by_conns = table(PATHS, board, None, "conns", False)
    assert [r[3] for r in by_conns] == ["3", "8", "16"]
    state = ViewState()
    press(state, PATHS.key)
    assert state.sort == "p99ms"
    press(state, "s")
    assert state.sort == "rst"  # wraps to the last column, then the first
    press(state, "s")
    assert state.sort == "scope"


def test_paths_view_fits_80_by_24_with_long_names_and_big_counts() -> None:
    assert width(PATHS) <= 80
    board = Board()
    for i in range(40):
        board.add(
            health(
                str(i),
                "node",
                f"ip-10-0-{i}-1.eu-west-1.compute.internal",
                f"gke-cluster-default-pool-{i}",
                conns=123_456_789 + i,
                syn=990_000 + i,
                rtts_us=[float(1000 * i + 1)],
            )
        )
    state = ViewState()
    press(state, PATHS.key)
    console = Console(width=80, height=24, record=True)
    console.print(screen(board, state, 24, "status"))
    lines = console.export_text().splitlines()
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines), lines
    assert "(23 more)" in lines[-2], lines
    assert lines[4].split()[1:6] == ["ip-10-0-39-1", "gke-cluster…", "123M", "0", "990k"], lines


def test_figures_keep_to_their_columns() -> None:
    assert [count_text(n, 5) for n in (0, 99_999, 100_000, 12_345_678)] == [
        "0",
        "99999",
        "100k",
        "12M",
    ]
    assert [count_text(n, 4) for n in (9999, 10_000)] == ["9999", "10k"]
    assert [host_text(n) for n in ("ip-10-0-1-5.ec2.internal", "node-a1", "10.0.0.7")] == [
        "ip-10-0-1-5",
        "node-a1",
        "10.0.0.7",
    ]
    assert [ms_text(v) for v in (None, 0.04, 12.34, 1234.5)] == ["-", "0.04", "12.3", "1234"]
    assert [rate_text(v) for v in (None, 0.0005, 0.123, 1.0)] == ["-", "0.05%", "12.3%", "100%"]
