"""``flowscope sink`` into Iceberg (SQLite catalog, local warehouse) from the real broker:
SIGKILLed while it writes a data file, restarted, and the tables read back with pyarrow hold
the topics' records one for one, nothing lost and nothing twice."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from consumers_records import S, conn, pod

from consumers.sink import EVENT_TIME, _row, committed_offsets, open_catalog
from flowscope.kafka import RecordProducer, TopicSpec, ensure_topics
from flowscope.records import Endpoint, EnrichedDnsQuery, EnrichedTcpConnection
from flowscope.topics import Topics

FLOWSCOPE = Path(sys.executable).parent / "flowscope"
HOUR = 3600 * S
BASE = 1_700_000_000 // 3600 * 3600 * S  # on an hour


def _tcp(i: int) -> EnrichedTcpConnection:
    # Three hours of records: three hour partitions.
    return conn(
        pod(f"web{i % 7}", "shop"),
        pod("db", "shop"),
        end_ns=BASE + (i % 3) * HOUR + i,
        port=i % 65536,
    )


def _dns(i: int) -> EnrichedDnsQuery:
    web, coredns = pod("web", "shop"), pod("coredns", "kube-system")
    return EnrichedDnsQuery(
        time_ns=BASE + (i % 2) * HOUR + i,
        response_time_ns=None,
        observer_node="n1",
        observer_role="client",
        client_observed=True,
        transport="udp",
        network_type="ipv4",
        client=Endpoint(**{**{f: getattr(web, f) for f in web.__struct_fields__}, "port": i}),
        server=coredns,
        server_class="cluster_dns",
        peer_class="same_zone",
        txid=i % 65536,
        query_name=f"q{i}.example.com",
        query_type="A",
        outcome="timeout",
        rcode=None,
        answer_count=None,
        latency_us=None,
        answer_addrs=[f"10.1.0.{i % 250}"],
    )


class Sink:
    def __init__(self, bootstrap: str, topics: Topics, warehouse: Path) -> None:
        self.proc = subprocess.Popen(
            [
                str(FLOWSCOPE),
                "sink",
                "--bootstrap-servers",
                bootstrap,
                "--topic-prefix",
                topics.prefix,
                "--warehouse",
                str(warehouse),
                "--max-rows",
                "300",
                "--max-seconds",
                "0.5",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.ready = self.proc.stdout.readline()
        assert "sink ready" in self.ready, self.ready

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)


@pytest.fixture
def sinks() -> Iterator[list[Sink]]:
    started: list[Sink] = []
    yield started
    for s in started:
        s.kill()


def _parquet(warehouse: Path) -> set[Path]:
    return set(warehouse.rglob("*.parquet"))


def _referenced(warehouse: Path) -> set[Path]:
    catalog = open_catalog(str(warehouse), {})
    out: set[Path] = set()
    for name in ("enriched_tcp", "enriched_dns"):
        files = catalog.load_table(f"flowscope.{name}").inspect.files()
        out |= {Path(p.removeprefix("file://")) for p in files["file_path"].to_pylist()}
    return out


def _rows(warehouse: Path, name: str) -> list[dict[str, Any]]:
    table = open_catalog(str(warehouse), {}).load_table(f"flowscope.{name}")
    return table.scan().to_arrow().to_pylist()  # type: ignore[no-any-return]


def _canonical(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(
        json.dumps({k: v for k, v in r.items() if k != EVENT_TIME}, sort_keys=True) for r in rows
    )


def test_rows_equal_the_records_after_a_kill_mid_write(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, sinks: list[Sink]
) -> None:
    ensure_topics(
        kafka_bootstrap,
        [TopicSpec(topics.enriched_tcp, partitions=2), TopicSpec(topics.enriched_dns)],
    )
    producer = RecordProducer(kafka_bootstrap)
    tcp = [_tcp(i) for i in range(6000)]
    dns = [_dns(i) for i in range(1500)]

    def publish(records: list[Any], topic: str) -> None:
        for i in range(0, len(records), 20):  # batch messages of 20, as the enricher writes
            chunk = records[i : i + 20]
            producer.produce(topic, msgspec.json.encode(chunk), key=str(i % 5), records=len(chunk))
        assert producer.flush(30) == 0

    publish(tcp[:4000], topics.enriched_tcp)
    publish(dns[:1000], topics.enriched_dns)
    warehouse = tmp_path / "lake"
    sinks.append(Sink(kafka_bootstrap, topics, warehouse))

    # Once a first snapshot is committed, SIGKILL as soon as a new data file appears: the
    # sink is then between writing that file and committing the snapshot that lists it.
    catalog = open_catalog(str(warehouse), {})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if committed_offsets(catalog.load_table("flowscope.enriched_tcp")):
            break
        time.sleep(0.05)  # polling the catalog for the first commit
    known = _parquet(warehouse)
    victim: set[Path] = set()
    while time.monotonic() < deadline:
        victim = _parquet(warehouse) - known
        if victim:
            sinks[0].kill()
            break
        time.sleep(0.002)  # a tight poll of the directory; the condition is the new file
    assert victim, "the sink wrote no further data file within 120 s"
    referenced = _referenced(warehouse)
    orphans = _parquet(warehouse) - referenced
    tcp_table = open_catalog(str(warehouse), {}).load_table("flowscope.enriched_tcp")
    before = sum(committed_offsets(tcp_table).values())
    print(
        f"killed with {len(orphans)} uncommitted data files of {len(_parquet(warehouse))}; "
        f"{before} tcp messages committed"
    )
    assert 0 < before < 4000 // 20  # killed mid-stream, after a commit
    assert victim & orphans, "the kill did not land between a data file and its commit"

    sinks.append(Sink(kafka_bootstrap, topics, warehouse))
    assert "resuming at" in sinks[1].ready
    publish(tcp[4000:], topics.enriched_tcp)
    publish(dns[1000:], topics.enriched_dns)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if len(_rows(warehouse, "enriched_tcp")) >= len(tcp) and len(
            _rows(warehouse, "enriched_dns")
        ) >= len(dns):
            break
        time.sleep(0.5)  # the sink catches up with the topics: awaited by the row counts
    sinks[1].kill(signal.SIGTERM)

    got_tcp, got_dns = _rows(warehouse, "enriched_tcp"), _rows(warehouse, "enriched_dns")
    assert len(got_tcp) == len(tcp) and len(got_dns) == len(dns)
    assert _canonical(got_tcp) == _canonical([_row(r) for r in tcp])
    assert _canonical(got_dns) == _canonical([_row(r) for r in dns])
    # Partitioned by date and hour; files sized by the row bound, not one per message.
    hours = {r[EVENT_TIME].replace(minute=0, second=0, microsecond=0) for r in got_tcp}
    assert len(hours) == 3
    tcp_files = len(tcp_table.refresh().inspect.files())
    assert tcp_files < len(tcp) // 20, tcp_files  # fewer files than messages
