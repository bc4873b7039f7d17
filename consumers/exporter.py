"""``flowscope exporter``: the metric topics as Prometheus metrics on /metrics.

Counters add every window's figures (first record per ``metric_id``: a republished window is
not counted twice), so ``rate()`` and ``increase()`` work as for any counter; latency
percentiles are gauges of the newest window seen for the series (partitions merged).

Cardinality is bounded: each family admits its first ``--top-n`` label sets as they appear,
and keeps them (a series that left and came back would reset its counter); every later label
set is added to one series whose labels are all ``other``. So a family has at most top-n + 1
series, nothing is lost from the sums, and ``flowscope_exporter_folded_keys`` says how many
label sets were folded. Path health (``flowscope_path_*``, labels scope, source, destination)
admits top-n paths per scope (node pairs, zone pairs) and folds the rest into
``{scope="node", source="other", destination="other"}``: at most top-n + 1 series per scope,
so many node pairs never push the few zone pairs out.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from consumers.catalog import RecordDecoder, resolve_topic
from consumers.options import (
    BOOTSTRAP,
    LOG_LEVEL,
    PREFIX,
    Option,
    add_options,
    parse_args,
    positive,
)
from consumers.tail import parse_start
from flowscope.codec import DecodeError
from flowscope.kafka import TopicFollower
from flowscope.records import (
    AlertEvent,
    CostPairMetric,
    DnsMetric,
    PathHealthMetric,
    TcpLatencyMetric,
)
from flowscope.topics import Topics
from processors.core.dedupe import FirstPerId
from processors.core.sketch import Sketch

OTHER = "other"
SOURCES = (
    "metrics.tcp.latency",
    "metrics.cost.pairs",
    "metrics.dns",
    "metrics.path.health",
    "alerts",
)
PAIR = ("client_workload", "server_workload", "service")
TRANSFER = (
    "source_workload",
    "destination_workload",
    "source_zone",
    "destination_zone",
    "cost_class",
)
DNS = ("client_workload", "server")
PATH = ("scope", "source", "destination")
# flowscope_path_<name>_total counters, in the order Family sums them.
PATH_COUNTERS = (
    (
        "connections",
        "finished TCP connections on the path (client end's node or zone -> server end's)",
    ),
    ("failed_connections", "connections refused, timed out, reset or unreachable"),
    ("resets", "connections that ended in a reset, sent or received"),
    ("connect_timeouts", "connects given up in SYN_SENT after SYN retransmissions"),
    ("syn_retransmits", "SYNs the clients sent again"),
    ("retransmitted_segments", "TCP segments the client ends retransmitted"),
    ("segments_sent", "TCP segments the client ends sent (the retransmission rate's denominator)"),
    ("dropped_packets", "packets the kernel dropped between the path's addresses (raw.drops)"),
)

OPTIONS = (
    BOOTSTRAP,
    PREFIX,
    LOG_LEVEL,
    Option(
        "port",
        "FLOWSCOPE_EXPORTER_PORT",
        "9464",
        "port of /metrics (0: any free port, printed at start)",
        int,
    ),
    Option("host", "FLOWSCOPE_EXPORTER_HOST", "0.0.0.0", "address /metrics listens on"),
    Option(
        "top_n",
        "FLOWSCOPE_EXPORTER_TOP_N",
        "100",
        "label sets per metric family; later ones are summed into one 'other' series",
        positive(int),
    ),
    Option(
        "start",
        "FLOWSCOPE_EXPORTER_START",
        "latest",
        "first records counted: earliest, latest or -DURATION (-1h)",
        parse_start,
    ),
)


@dataclass
class Family:
    """Sums per admitted label set, the rest under OTHER."""

    top_n: int
    sums: dict[tuple[str, ...], list[float]] = field(default_factory=dict)
    folded: set[tuple[str, ...]] = field(default_factory=set)

    def key(self, labels: tuple[str, ...]) -> tuple[str, ...]:
        if labels in self.sums or len(self.sums) < self.top_n:
            return labels
        self.folded.add(labels)
        return tuple(OTHER for _ in labels)

    def add(self, labels: tuple[str, ...], *values: float) -> tuple[str, ...]:
        key = self.key(labels)
        sums = self.sums.setdefault(key, [0.0] * len(values))
        for i, v in enumerate(values):
            sums[i] += v
        return key


def _label(v: str | None) -> str:
    return "" if v is None else v


class MetricState:
    """Records in, Prometheus families out. Thread-safe: the feed adds, scrapes read."""

    def __init__(self, top_n: int) -> None:
        self._lock = threading.Lock()
        self._first = FirstPerId()
        self.pairs = Family(top_n)
        self.transfer = Family(top_n)
        self.dns = Family(top_n)
        self.paths = {"node": Family(top_n), "zone": Family(top_n)}  # per scope: see above
        # newest window per pair or path: (window_start_ns, merged sketch of its partitions)
        self._latency: dict[tuple[str, ...], tuple[int, Sketch]] = {}
        self._rtt: dict[tuple[str, ...], tuple[int, Sketch]] = {}
        self._alerts: dict[str, AlertEvent] = {}
        self.records: dict[str, int] = {}
        self.undecodable = 0

    def add(self, topic: str, record: Any) -> None:
        with self._lock:
            self.records[topic] = self.records.get(topic, 0) + 1
            if isinstance(record, AlertEvent):
                seen = self._alerts.get(record.alert_id)
                if seen is None or seen.status == "firing":
                    self._alerts[record.alert_id] = record
                return
            if not self._first.keep([record]):
                return
            if isinstance(record, TcpLatencyMetric):
                self._add_latency(record)
            elif isinstance(record, CostPairMetric):
                labels = (
                    record.source_workload,
                    record.destination_workload,
                    _label(record.source_zone),
                    _label(record.destination_zone),
                    record.cost_class,
                )
                both = record.bytes_source_to_destination + record.bytes_destination_to_source
                self.transfer.add(labels, both, record.cost_usd)
            elif isinstance(record, DnsMetric):
                self.dns.add(
                    (record.client_workload, record.server),
                    record.queries,
                    record.failed,
                    record.queries - record.search_noise,
                )
            elif isinstance(record, PathHealthMetric):
                self._add_path(record)

    def _add_latency(self, m: TcpLatencyMetric) -> None:
        key = self.pairs.add(
            (m.client_workload, m.server_workload, _label(m.service)),
            m.connections,
            m.failed_connections,
        )
        if OTHER not in key:
            _newest(self._latency, key, m.window_start_ns, m.connect_latency_sketch)

    def _add_path(self, m: PathHealthMetric) -> None:
        key = self.paths[m.scope].add(
            (m.source, m.destination),
            m.connections,
            m.failed_connections,
            m.resets,
            m.connect_timeouts,
            m.syn_retransmits,
            m.retrans_segs,
            m.segs_out,
            m.dropped_packets,
        )
        if OTHER not in key:
            _newest(self._rtt, (m.scope, *key), m.window_start_ns, m.rtt_sketch)

    def families(self) -> Iterator[Metric]:
        with self._lock:
            yield from self._families()

    def _families(self) -> Iterator[Metric]:
        conns = CounterMetricFamily(
            "flowscope_tcp_connections", "finished TCP connections per service pair", labels=PAIR
        )
        failed = CounterMetricFamily(
            "flowscope_tcp_failed_connections",
            "connections refused, timed out, reset or unreachable",
            labels=PAIR,
        )
        for labels, (c, f) in self.pairs.sums.items():
            conns.add_metric(labels, c)
            failed.add_metric(labels, f)
        yield from (conns, failed)
        for q in (0.5, 0.99):
            g = GaugeMetricFamily(
                f"flowscope_tcp_connect_latency_p{int(q * 100)}_seconds",
                f"connect latency quantile {q} of the newest window per pair",
                labels=PAIR,
            )
            for labels, (_, sketch) in self._latency.items():
                v = sketch.quantile(q)
                if v is not None:
                    g.add_metric(labels, v / 1e6)
            yield g
        tb = CounterMetricFamily(
            "flowscope_transfer_bytes",
            "TCP payload bytes both ways per workload and zone pair",
            labels=TRANSFER,
        )
        usd = CounterMetricFamily(
            "flowscope_transfer_cost_usd",
            "data-transfer dollars at the price table's per-GB prices",
            labels=TRANSFER,
        )
        for labels, (b, d) in self.transfer.sums.items():
            tb.add_metric(labels, b)
            usd.add_metric(labels, d)
        yield from (tb, usd)
        yield from self._path_families()
        dq = CounterMetricFamily("flowscope_dns_queries", "DNS queries", labels=DNS)
        df = CounterMetricFamily(
            "flowscope_dns_failed",
            "failed DNS queries (search-path NXDOMAIN noise excluded)",
            labels=DNS,
        )
        dj = CounterMetricFamily(
            "flowscope_dns_judged_queries",
            "queries that count for the failure rate (queries - search noise)",
            labels=DNS,
        )
        for labels, (q_, f_, j) in self.dns.sums.items():
            dq.add_metric(labels, q_)
            df.add_metric(labels, f_)
            dj.add_metric(labels, j)
        yield from (dq, df, dj)
        firing = GaugeMetricFamily(
            "flowscope_alerts_firing", "firing alert episodes", labels=("rule", "severity")
        )
        counts: dict[tuple[str, str], int] = {}
        for a in self._alerts.values():
            if a.status == "firing":
                counts[(a.rule, a.severity)] = counts.get((a.rule, a.severity), 0) + 1
        for labels, n in counts.items():
            firing.add_metric(labels, n)
        yield firing
        rec = CounterMetricFamily("flowscope_exporter_records", "records read", labels=["topic"])
        for topic, n in self.records.items():
            rec.add_metric([topic], n)
        yield rec
        yield CounterMetricFamily(
            "flowscope_exporter_duplicates",
            "records dropped as republished windows",
            value=self._first.duplicates,
        )
        yield CounterMetricFamily(
            "flowscope_exporter_undecodable", "messages that did not decode", value=self.undecodable
        )
        folded = GaugeMetricFamily(
            "flowscope_exporter_folded_keys",
            "label sets summed into 'other' (beyond --top-n)",
            labels=["family"],
        )
        families = [("tcp", self.pairs), ("transfer", self.transfer), ("dns", self.dns)]
        families += [(f"path_{scope}", fam) for scope, fam in self.paths.items()]
        for name, fam in families:
            folded.add_metric([name], len(fam.folded))
        yield folded

    def _path_families(self) -> Iterator[Metric]:
        counters = [
            CounterMetricFamily(f"flowscope_path_{name}", doc, labels=PATH)
            for name, doc in PATH_COUNTERS
        ]
        for scope, fam in self.paths.items():
            for labels, sums in fam.sums.items():
                for counter, v in zip(counters, sums, strict=True):
                    counter.add_metric((scope, *labels), v)
        yield from counters
        for q in (0.5, 0.99):
            g = GaugeMetricFamily(
                f"flowscope_path_rtt_p{int(q * 100)}_seconds",
                f"smoothed RTT quantile {q} of the newest window per path",
                labels=PATH,
            )
            for labels, (_, sketch) in self._rtt.items():
                rtt = sketch.quantile(q)
                if rtt is not None:
                    g.add_metric(labels, rtt / 1e6)
            yield g


def _newest(
    into: dict[tuple[str, ...], tuple[int, Sketch]],
    key: tuple[str, ...],
    window_start_ns: int,
    sketch_dict: dict[str, object] | None,
) -> None:
    """Keep the newest window's sketch per series; partitions of one window merge."""
    if sketch_dict is None:
        return
    sketch = Sketch.from_dict(sketch_dict)
    newest = into.get(key)
    if newest is None or window_start_ns > newest[0]:
        into[key] = (window_start_ns, sketch)
    elif window_start_ns == newest[0]:
        newest[1].merge(sketch)  # another partition of the same window


class StateCollector(Collector):
    def __init__(self, state: MetricState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        return self.state.families()


def feed(
    state: MetricState,
    follower: TopicFollower,
    decoders: Mapping[str, RecordDecoder],
    stop: threading.Event,
) -> None:
    while not stop.is_set():
        for msg in follower.poll(0.5):
            try:
                records = decoders[msg.topic].decode(msg.value)
            except DecodeError:
                state.undecodable += 1
                continue
            for record in records:
                state.add(msg.topic, record)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="flowscope exporter",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, OPTIONS, dict(os.environ))
    args = parse_args(parser, argv)
    topics = Topics(args.topic_prefix)
    kinds = [resolve_topic(s, topics) for s in SOURCES]
    decoders = {k.topic: RecordDecoder(k.record_type) for k in kinds}
    state = MetricState(args.top_n)
    REGISTRY.register(StateCollector(state))
    server, _thread = start_http_server(args.port, addr=args.host)
    port = server.server_address[1]
    follower = TopicFollower(args.bootstrap_servers, list(decoders), args.start)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(
        f"exporter ready: http://{args.host}:{port}/metrics from {topics.prefix}.metrics.*",
        flush=True,
    )
    try:
        feed(state, follower, decoders, stop)
    finally:
        follower.close()
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
