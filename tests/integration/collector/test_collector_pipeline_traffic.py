"""The broker goes down: the collector's own reconnects to it are counted apart
(kernel_pipeline_failed), never produced as the cluster's refused connections, while a
workload's refused connect in the same time is.

This test stops a broker: it starts its own (devbroker, free ports), never the shared one.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devbroker import Broker
from flowscope.kafka import TopicSpec, ensure_topics
from flowscope.topics import Topics
from tests.integration.collector.test_collector_restart import CollectorProcess, RawReader


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def own_broker(root_required: None, tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(
        state_dir=tmp_path / "kafka", port=_free_port(), controller_port=_free_port(), heap_mb=384
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _refused_port() -> int:
    """A loopback port nobody listens on (bound, never listened, then closed)."""
    return _free_port()


def test_broker_outage_reconnects_are_not_workload_failures(
    own_broker: Broker, topics: Topics, bpf_built: None
) -> None:
    bootstrap = own_broker.bootstrap
    broker_port = int(bootstrap.rsplit(":", 1)[1])
    ensure_topics(bootstrap, [TopicSpec(topics.raw_tcp)])
    env = {
        **os.environ,
        "FLOWSCOPE_BOOTSTRAP_SERVERS": bootstrap,
        "FLOWSCOPE_TOPIC_PREFIX": topics.prefix,
    }
    collector = CollectorProcess(
        [
            "--node-name",
            f"own-{uuid.uuid4().hex[:6]}",
            "--udp-interval-seconds",
            "0",
            "--stats-interval-seconds",
            "1",
            "--flush-timeout-seconds",
            "60",
            "--kafka-option",
            "reconnect.backoff.max.ms=200",
        ],
        env,
    )
    refused = _refused_port()
    try:
        assert collector.ready.wait(60), "".join(collector.log)
        own_broker.stop()
        deadline = time.monotonic() + 30
        # Await the reconnects: the stats line shows the kernel counting them.
        while time.monotonic() < deadline and not any(
            "kernel_pipeline_failed=" in line and "kernel_pipeline_failed=0 " not in line
            for line in collector.log[-5:]
        ):
            time.sleep(0.2)
        with pytest.raises(ConnectionRefusedError):  # a workload's failure
            socket.create_connection(("127.0.0.1", refused), timeout=5).close()
        own_broker.start()
        reader = RawReader(bootstrap, topics.raw_tcp)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any(
                r.remote_port == refused for r in reader.records
            ):
                reader._poll()
            assert collector.stop(signal.SIGTERM) == 0, "".join(collector.log)
            reader.to_end()
        finally:
            reader.close()
    finally:
        collector.stop(signal.SIGKILL)
    counters = collector.final_counters()
    theirs = [r for r in reader.records if broker_port in (r.local_port, r.remote_port)]
    assert theirs == [], theirs[:3]
    workload = [r for r in reader.records if r.remote_port == refused]
    assert [r.outcome for r in workload] == ["refused"], workload
    assert counters["kernel_pipeline_failed"] > 0, counters
    print(
        f"broker down: {counters['kernel_pipeline_failed']} refused reconnects and "
        f"{counters['kernel_pipeline_closed']} closed pipeline connections counted apart, "
        f"0 produced; the workload's refused connect produced"
    )
