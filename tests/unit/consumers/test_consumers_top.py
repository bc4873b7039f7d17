"""top without a terminal: the board merges as a reader must, keys change the view, and
every view fits 80x24."""

from __future__ import annotations

from consumers_records import T0, S
from rich.console import Console

from consumers.rollup import Board
from consumers.top.keys import press
from consumers.top.screen import ViewState, screen
from consumers.top.views import VIEWS, table, width
from flowscope.records import TcpLatencyMetric
from processors.core.sketch import sketch_of


def _latency(
    mid: str,
    client: str,
    server: str,
    conns: int,
    failed: int,
    values: list[float],
    partition: int = 0,
) -> TcpLatencyMetric:
    sk = sketch_of(values)
    return TcpLatencyMetric(
        metric_id=mid,
        window_start_ns=T0,
        window_end_ns=T0 + 10 * S,
        source_partition=partition,
        client_workload=f"shop/Deployment/{client}",
        server_workload=f"shop/Deployment/{server}",
        service=None,
        client_namespace="shop",
        server_namespace="shop",
        connections=conns,
        failed_connections=failed,
        outcomes={"closed": conns - failed, "refused": failed},
        failure_rate=failed / conns,
        connect_latency_p50_us=None,
        connect_latency_p90_us=None,
        connect_latency_p99_us=None,
        rtt_p50_us=None,
        rtt_p90_us=None,
        rtt_p99_us=None,
        retrans_segs=0,
        segs_out=0,
        retransmission_rate=None,
        connect_latency_sketch=sk.to_dict(),
        rtt_sketch=None,
    )


def test_board_keeps_the_first_record_per_id_and_merges_partitions() -> None:
    board = Board()
    board.add(_latency("a", "fe", "cat", 10, 1, [100.0] * 10, partition=0))
    board.add(_latency("a", "fe", "cat", 10, 1, [100.0] * 10, partition=0))  # republished
    board.add(_latency("b", "fe", "cat", 5, 0, [900_000.0] * 5, partition=1))
    (row,) = board.pairs()
    assert (row.connections, row.failed, board.duplicates) == (15, 1, 1)
    assert row.p99_ms is not None and 890 < row.p99_ms < 910  # from the merged sketch
    assert board.pairs("billing") == []


def test_keys_switch_views_sort_reverse_and_filter() -> None:
    state = ViewState()
    assert press(state, "2") and state.current.name == "failures" and state.sort == "fail%"
    press(state, "s")
    assert state.sort == "worst outcome"
    press(state, "r")
    assert not state.descending
    press(state, "\t")
    assert state.current.name == "cost" and state.descending
    for key in "nshop\r":
        press(state, key)
    assert state.namespace == "shop" and state.prompt is None
    for key in "nx\x1b":
        press(state, key)
    assert state.namespace == "shop"
    assert not press(state, "q")


def test_sorting_by_p99_puts_unmeasured_rows_last_either_way() -> None:
    board = Board()
    board.add(_latency("a", "fe", "cat", 10, 0, [100.0]))
    board.add(_latency("b", "fe", "pay", 10, 0, [5000.0]))
    board.add(_latency("c", "fe", "ledger", 10, 10, []))
    view = VIEWS[0]
    _, rows = table(view, board, None, "p99 ms", True)
    assert [r[1] for r in rows] == ["shop/pay", "shop/cat", "shop/ledger"]
    _, rows = table(view, board, None, "p99 ms", False)
    assert [r[1] for r in rows] == ["shop/cat", "shop/pay", "shop/ledger"]


def test_every_view_fits_80_by_24_with_many_rows() -> None:
    board = Board()
    for i in range(40):
        board.add(
            _latency(
                str(i),
                f"frontend-with-a-long-name-{i}",
                f"srv-{i}",
                10,
                i % 3,
                [float(100 * i + 1)],
            )
        )
    for i, view in enumerate(VIEWS):
        assert width(view) <= 80, view.name
        state = ViewState()
        press(state, view.key)
        console = Console(width=80, height=24, record=True)
        console.print(screen(board, state, 24, "status"))
        lines = console.export_text().splitlines()
        assert len(lines) <= 24 and all(len(line) <= 80 for line in lines), (i, lines)
        if view.name in ("latency", "failures"):
            assert "(23 more)" in lines[-2], lines
