"""``flowscope top`` in a real terminal (tmux, 80x24) against a running pipeline: real pods,
BPF, collector, enricher, processors. Keys switch views, sort and filter; the rows on the
screen (service pairs, dollars, network paths' health, alerts) are checked against the
metric records the test reads off the topics itself."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from consumers.top.views import ms_text, rate_text, usd_text
from demo.readout import TopicReader
from demo.services import PipelineSettings, publish_metadata, running_pipeline
from flowscope.codec import JsonCodec
from flowscope.records import CostPairMetric, PathHealthMetric, TcpLatencyMetric
from flowscope.topics import Topics
from processors.core.dedupe import FirstPerId
from processors.core.sketch import Sketch
from simnode import Cluster, NodeSpec, Pod

FLOWSCOPE = Path(sys.executable).parent / "flowscope"
FRONTEND, CHECKOUT, CATALOG = (
    "shop/Deployment/frontend",
    "shop/Deployment/checkout",
    ("shop/Deployment/catalog"),
)
EXPECTED = {(FRONTEND, CHECKOUT): 12, (FRONTEND, CATALOG): 8}
REFUSED = 4  # frontend -> checkout:7070, where nothing listens
RULES = """rules:
  - name: connect-failure-rate
    metric: tcp.connect_failure_rate
    group_by: [client_workload, server_workload, service]
    threshold: 0.05
    for_windows: 1
    severity: warning
    min_connections: 1
"""


class Terminal:
    """A tmux session of 80x24 running one command."""

    def __init__(self, command: list[str]) -> None:
        self.name = f"fstop-{uuid.uuid4().hex[:8]}"
        subprocess.run(
            [
                "tmux",
                "new-session",
                "-d",
                "-s",
                self.name,
                "-x",
                "80",
                "-y",
                "24",
                " ".join(command),
            ],
            check=True,
        )

    def screen(self) -> str:
        done = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name],
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, what: Callable[[str], bool], timeout_s: float = 60) -> str:
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if what(text):
                return text
            time.sleep(0.3)  # a redraw is awaited by polling the screen: the condition
        raise AssertionError(f"the screen never showed it; last screen:\n{text}")

    def alive(self) -> bool:
        return (
            subprocess.run(
                ["tmux", "has-session", "-t", self.name], capture_output=True, check=False
            ).returncode
            == 0
        )

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True, check=False)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with Cluster([NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]) as c:
        yield c


def _rows(screen: str, first: str) -> list[list[str]]:
    return [line.split() for line in screen.splitlines() if line.startswith(first)]


def _p99_ms(ms: list[TcpLatencyMetric]) -> str:
    # A window whose connections all failed carries no sketch.
    sketches = [Sketch.from_dict(m.connect_latency_sketch) for m in ms if m.connect_latency_sketch]
    if not sketches:
        return "-"
    merged = sketches[0]
    for sk in sketches[1:]:
        merged.merge(sk)
    value = merged.quantile(0.99)
    return "-" if value is None else f"{value / 1000:.2f}"


PathKey = tuple[str, str, str]


def _path_rows(screen: str) -> dict[PathKey, list[str]]:
    """The paths view's rows: scope from to conns fail synrt retx% p50ms p99ms rst."""
    rows = [line.split() for line in screen.splitlines()]
    return {(r[0], r[1], r[2]): r[3:] for r in rows if len(r) == 10 and r[0] in ("node", "zone")}


def _expected_paths(records: list[PathHealthMetric], namespace: str) -> dict[PathKey, list[str]]:
    """What the paths view must show, from the path health records: the paths the
    namespace's workloads used, every record on them summed, RTT from the merged sketches."""
    groups: dict[PathKey, list[PathHealthMetric]] = {}
    for m in FirstPerId().keep(records):
        groups.setdefault((m.scope, m.source, m.destination), []).append(m)
    out = {}
    for key, ms in groups.items():
        ends = [e for m in ms for pair in m.services for e in pair.split(" -> ")]
        if not any(e.startswith(f"{namespace}/") for e in ends):
            continue
        sketches = [Sketch.from_dict(m.rtt_sketch) for m in ms if m.rtt_sketch]
        merged = sketches[0] if sketches else None
        for sk in sketches[1:]:
            assert merged is not None
            merged.merge(sk)

        def q_ms(q: float, merged: Sketch | None = merged) -> str:
            v = None if merged is None else merged.quantile(q)
            return ms_text(None if v is None else v / 1000)

        segs = sum(m.segs_out for m in ms)
        retx = sum(m.retrans_segs for m in ms) / segs if segs else None
        out[key] = [
            str(sum(m.connections for m in ms)),
            str(sum(m.failed_connections for m in ms)),
            str(sum(m.syn_retransmits for m in ms)),
            rate_text(retx),
            q_ms(0.5),
            q_ms(0.99),
            str(sum(m.resets for m in ms)),
        ]
    return out


def test_top_shows_what_the_metric_topics_hold(
    root_required: None, kafka_bootstrap: str, topics: Topics, cluster: Cluster, tmp_path: Path
) -> None:
    checkout = cluster.add_pod("checkout", node="node-b1", namespace="shop")
    catalog = cluster.add_pod("catalog", node="node-a1", namespace="shop")
    frontend = cluster.add_pod("frontend", node="node-a1", namespace="shop")
    cart = cluster.add_pod("cart", node="node-b1", namespace="shop")
    publish_metadata(kafka_bootstrap, topics, cluster.write_objects(tmp_path / "objects.yaml"))
    rules = tmp_path / "alerts.yaml"
    rules.write_text(RULES)
    settings = PipelineSettings(
        bootstrap=kafka_bootstrap,
        topics=topics,
        node_name="sim-host",
        log_dir=tmp_path / "logs",
        window_s=3.0,
        grace_s=2.0,
        processor_args=("--alert-rules", str(rules)),
    )
    latency_reader = TopicReader(kafka_bootstrap, topics.metrics_tcp_latency)
    cost_reader = TopicReader(kafka_bootstrap, topics.metrics_cost_pairs)
    path_reader = TopicReader(kafka_bootstrap, topics.metrics_path_health)
    path_codec = JsonCodec(PathHealthMetric)
    term: Terminal | None = None
    try:
        with running_pipeline(settings):
            servers = [
                (pod, pod.start_server(port, reply_bytes=2000))
                for pod, port in ((checkout, 8080), (catalog, 8080))
            ]
            for pod, proc in servers:
                pod.wait_listening(8080, proc=proc)
            for server, n in ((checkout, 12), (catalog, 8)):
                summary = frontend.run_client(
                    server.ip, 8080, count=n, send_bytes=500, expect_reply_bytes=2000
                )
                assert summary.completed == n, summary
            frontend.run(
                Pod.python(
                    "simnode.traffic",
                    "client",
                    "--host",
                    checkout.ip,
                    "--port",
                    "7070",
                    "--count",
                    str(REFUSED),
                    "--send-bytes",
                    "10",
                ),
                check=False,
            )
            for pod, proc in servers:
                pod.stop_server(proc)

            def ours(ms: list[TcpLatencyMetric]) -> dict[tuple[str, str], int]:
                counts: dict[tuple[str, str], int] = {}
                for m in ms:
                    if m.client_workload == FRONTEND:
                        key = (m.client_workload, m.server_workload)
                        counts[key] = counts.get(key, 0) + m.connections
                return counts

            want = {(FRONTEND, CHECKOUT): 12 + REFUSED, (FRONTEND, CATALOG): 8}
            latency = FirstPerId().keep(
                latency_reader.read_until(
                    JsonCodec(TcpLatencyMetric),
                    lambda ms: ours(FirstPerId().keep(ms)) == want,
                    timeout_s=90,
                )
            )
            assert ours(latency) == want
            cost = FirstPerId().keep(
                cost_reader.read_until(
                    JsonCodec(CostPairMetric),
                    lambda ms: (
                        sum(m.connections for m in ms if m.source_workload == FRONTEND) >= 20
                    ),
                    timeout_s=60,
                )
            )

            # An alert resolves on the first quiet window: cart keeps failing (refused, twice
            # a second) so that one stays firing until the alerts view is read.
            failing = cart.start(
                Pod.python(
                    "simnode.traffic",
                    "client",
                    "--host",
                    checkout.ip,
                    "--port",
                    "7070",
                    "--count",
                    "100000",
                    "--send-bytes",
                    "10",
                    "--interval-ms",
                    "500",
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            term = Terminal(
                [
                    str(FLOWSCOPE),
                    "top",
                    "--bootstrap-servers",
                    kafka_bootstrap,
                    "--topic-prefix",
                    topics.prefix,
                ]
            )
            term.wait_for(lambda s: "q quit" in s)
            term.keys("n", "shop", "Enter")  # the namespace filter, typed

            # View 1: latency, p99 descending. Rows: client server service conns fail% p50 p99.
            groups: dict[tuple[str, str], list[TcpLatencyMetric]] = {}
            for m in latency:
                if m.client_workload == FRONTEND:
                    key = (m.server_workload.split("/")[2], m.service or "-")
                    groups.setdefault(key, []).append(m)
            expected_rows = {}
            for key, ms in groups.items():
                conns = sum(m.connections for m in ms)
                failed = sum(m.failed_connections for m in ms)
                expected_rows[key] = (str(conns), f"{100 * failed / conns:.1f}%", _p99_ms(ms))
            screen = term.wait_for(
                lambda s: (
                    len(_rows(s, "shop/frontend")) == len(expected_rows)
                    and "ns shop" in s
                    and sum(int(r[3]) for r in _rows(s, "shop/frontend")) == 24
                )
            )
            print(screen)  # what a person sees (pytest -s shows it)
            lines = screen.splitlines()
            assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
            assert "1 latency" in lines[0] and "q quit" in screen
            shown = {
                (r[1].split("/")[1], r[2]): (r[3], r[4], r[6])
                for r in _rows(screen, "shop/frontend")
            }
            assert shown == expected_rows, screen
            p99s = [float(r[6]) for r in _rows(screen, "shop/frontend") if r[6] != "-"]
            assert p99s == sorted(p99s, reverse=True), screen
            term.keys("r")
            screen = term.wait_for(lambda s: "asc" in s)
            p99s = [float(r[6]) for r in _rows(screen, "shop/frontend") if r[6] != "-"]
            assert p99s == sorted(p99s), screen

            # View 2: failure rate; the refused connections put checkout first.
            term.keys("2")
            screen = term.wait_for(lambda s: "by connection failure rate" in s)
            rows = _rows(screen, "shop/frontend")
            assert rows[0][1] == "shop/checkout" and rows[0][-2:] == ["refused", str(REFUSED)]

            # View 3: dollars per workload and zone pair, as the cost topic says.
            term.keys("3")
            screen = term.wait_for(lambda s: "data-transfer dollars" in s)
            for row in _rows(screen, "shop/frontend"):
                dest = {"shop/checkout": CHECKOUT, "shop/catalog": CATALOG}[row[1]]
                ms = [
                    m
                    for m in cost
                    if m.source_workload == FRONTEND
                    and m.destination_workload == dest
                    and m.cost_class == row[3]
                ]
                assert row[5] == usd_text(sum(m.cost_usd for m in ms)), (row, ms)
                assert row[2] == f"{ms[0].source_zone}>{ms[0].destination_zone}"
            zones = {r[1]: r[2] for r in _rows(screen, "shop/frontend")}
            assert zones == {"shop/checkout": "zone-a>zone-b", "shop/catalog": "zone-a>zone-a"}

            # View 6: the failure-rate rule fires for cart -> checkout (and fired, then
            # resolved, for frontend -> checkout once its traffic stopped).
            term.keys("6")

            def cart_firing(screen: str) -> bool:
                return any(
                    "shop/cart" in line and "shop/checkout" in line
                    for line in screen.splitlines()
                    if "connect-failure-rate" in line
                )

            screen = term.wait_for(cart_firing)
            failing.terminate()
            failing.wait(10)
            # Another namespace: nothing of shop's is left on the screen.
            term.keys("n", "billing", "Enter")
            screen = term.wait_for(lambda s: "ns billing" in s)
            assert "connect-failure-rate" not in screen, screen

            # Read after the alerts view: a quiet window resolves the alert.
            def frontend_on_zones(ms: list[PathHealthMetric]) -> int:
                return sum(
                    m.connections
                    for m in FirstPerId().keep(ms)
                    if m.scope == "zone" and any(s.startswith(FRONTEND) for s in m.services)
                )

            paths = path_reader.read_until(
                path_codec, lambda ms: frontend_on_zones(ms) >= 24, timeout_s=60
            )
            assert frontend_on_zones(paths) >= 24, paths

            # View 5: the paths shop's pods used, node and zone pairs, with their health as
            # the path health records say (the figures are every namespace's on the path).
            term.keys("5", "n", "shop", "Enter")
            deadline = time.monotonic() + 60
            shown_paths: dict[PathKey, list[str]] = {}
            while time.monotonic() < deadline:
                paths.extend(r for v in path_reader.read(0.3) for r in path_codec.decode_batch(v))
                want_paths = _expected_paths(paths, "shop")
                screen = term.screen()
                shown_paths = _path_rows(screen)
                if shown_paths == want_paths and "ns shop" in screen:
                    break
            print(screen)
            assert shown_paths == want_paths, (screen, want_paths)
            assert {k for k in shown_paths} >= {
                ("node", "node-a1", "node-b1"),
                ("node", "node-a1", "node-a1"),
                ("zone", "zone-a", "zone-b"),
                ("zone", "zone-a", "zone-a"),
            }
            assert int(shown_paths[("zone", "zone-a", "zone-b")][1]) >= REFUSED  # refused
            assert "(all namespaces)" in screen and all(len(x) <= 80 for x in screen.split("\n"))
            p99s = [float(r[5]) for r in shown_paths.values() if r[5] != "-"]
            in_order = [
                float(r[8])
                for r in (ln.split() for ln in screen.splitlines())
                if len(r) == 10 and r[0] in ("node", "zone") and r[8] != "-"
            ]
            assert in_order == sorted(p99s, reverse=True), screen
            term.keys("s", "s", "s", "s", "s", "r")  # p99ms -> rst, scope, from, to, conns; asc
            screen = term.wait_for(lambda s: "sort conns asc" in s)
            path_conns = [
                int(r[3])
                for r in (ln.split() for ln in screen.splitlines())
                if len(r) == 10 and r[0] in ("node", "zone")
            ]
            assert path_conns == sorted(path_conns) and len(path_conns) == len(want_paths), screen
            term.keys("n", "billing", "Enter")  # billing's pods used no path
            screen = term.wait_for(lambda s: "path health" in s and "ns billing" in s)
            assert _path_rows(screen) == {}, screen

            term.keys("q")
            deadline = time.monotonic() + 20
            while term.alive() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not term.alive(), "q did not quit"

        # Not a terminal: every view as a plain table, the same figures.
        done = subprocess.run(
            [
                str(FLOWSCOPE),
                "top",
                "--bootstrap-servers",
                kafka_bootstrap,
                "--topic-prefix",
                topics.prefix,
                "--namespace",
                "shop",
                "--read-seconds",
                "4",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        plain = done.stdout
        for title in (
            "p99 connect latency",
            "failure rate",
            "dollars",
            "DNS",
            "path health",
            "firing alerts",
        ):
            assert title in plain, plain
        rows = [
            line.split()
            for line in plain.split("\n\n")[0].splitlines()
            if line.startswith("shop/frontend")
        ]
        assert {(r[1].split("/")[1], r[2]): (r[3], r[4], r[6]) for r in rows} == expected_rows
        (path_table,) = [part for part in plain.split("\n\n") if part.startswith("path health")]
        paths.extend(r for v in path_reader.read(1.0) for r in path_codec.decode_batch(v))
        assert _path_rows(path_table) == _expected_paths(paths, "shop"), path_table
    finally:
        if term is not None:
            term.close()
        latency_reader.close()
        cost_reader.close()
        path_reader.close()
