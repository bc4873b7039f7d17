"""The worker's counters on /metrics (processors/metrics.py), and its root error."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from flowscope.metrics import scrape
from processors import ProcessorsError
from processors.__main__ import main
from processors.core.alerts import AlertRuleError
from processors.core.stage import Source
from processors.core.windows import InvalidRecord
from processors.cost.prices import PriceTableError, load_price_table
from processors.dns.processor import DnsProcessor
from processors.metrics import VOCABULARY, MetricsBoard
from processors.path.health import PathHealthProcessor
from processors.settings import SettingsError
from processors.tcp.processor import ConnectionProcessor
from processors.udp.processor import UdpProcessor

REPO = Path(__file__).resolve().parents[3]
S = 1_000_000_000
T0 = 1_700_000_000 * S


def _stages() -> tuple[ConnectionProcessor, DnsProcessor]:
    prices = load_price_table(REPO / "config" / "prices.yaml")
    return ConnectionProcessor(10 * S, 5 * S, 10 * S, prices, []), DnsProcessor(10 * S, 0, 0)


def test_every_stage_counter_is_routed_for_every_signal() -> None:
    tcp, dns = _stages()
    udp = UdpProcessor(10 * S, 5 * S, 10 * S, load_price_table(REPO / "config" / "prices.yaml"))
    path = PathHealthProcessor(10 * S, 5 * S, 10 * S)
    board = MetricsBoard({"tcp": tcp, "udp": udp, "dns": dns, "path": path})
    assert len(board.latest) > 45
    assert VOCABULARY.unrouted(board.latest) == []
    registry = VOCABULARY.registry(lambda: board.latest)
    assert (
        registry.get_sample_value("flowscope_processors_records_in_total", {"signal": "udp"}) == 0
    )


def test_the_board_shows_the_last_refresh_and_reading_it_changes_nothing() -> None:
    tcp, dns = _stages()
    board = MetricsBoard({"tcp": tcp, "dns": dns})
    registry = VOCABULARY.registry(lambda: board.latest)
    tcp.handle(b"{nope", Source("t", 0, 1, b"k"), now_ns=T0)
    dead = {"signal": "tcp", "outcome": "produced"}
    assert registry.get_sample_value("flowscope_processors_deadletter_records_total", dead) == 0
    board.refresh()
    assert registry.get_sample_value("flowscope_processors_deadletter_records_total", dead) == 1
    assert (
        registry.get_sample_value("flowscope_processors_records_in_total", {"signal": "dns"}) == 0
    )
    text = generate_latest(registry).decode()
    assert "# TYPE flowscope_processors_open_windows gauge" in text
    assert "# HELP flowscope_processors_handling_milliseconds " in text
    # The periodic log's late count is still its own (reset by report() only).
    assert tcp.report()["late_since_last_report"] == 0


def test_board_serves_over_http() -> None:
    tcp, dns = _stages()
    server = MetricsBoard({"tcp": tcp, "dns": dns}).serve(_free_port())
    assert server is not None
    try:
        _, values = scrape(server.port)
    finally:
        server.close()
    assert values["flowscope_processors_windows_closed_total{signal=tcp}"] == 0
    assert MetricsBoard({"tcp": tcp}).serve(0) is None


def test_a_taken_metrics_port_is_a_processors_error() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        tcp, dns = _stages()
        with pytest.raises(ProcessorsError, match="metrics port"):
            MetricsBoard({"tcp": tcp, "dns": dns}).serve(taken.getsockname()[1])


def test_specific_errors_derive_from_the_root() -> None:
    for error in (SettingsError, PriceTableError, AlertRuleError, InvalidRecord):
        assert issubclass(error, ProcessorsError), error


def test_main_rejects_a_bad_metrics_port_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--metrics-port", "70000"]) == 2
    assert "metrics port must be 0 (off) or 1-65535" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
