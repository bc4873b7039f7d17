"""server.properties for a single-node KRaft broker (combined broker+controller) on loopback."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

NODE_ID = 1


@dataclass(frozen=True)
class Ports:
    broker: int
    controller: int

    def __post_init__(self) -> None:
        for name, port in (("broker", self.broker), ("controller", self.controller)):
            if not 1 <= port <= 65535:
                raise ValueError(f"{name} port {port} is not in 1..65535")
        if self.broker == self.controller:
            raise ValueError(f"broker and controller ports must differ (both {self.broker})")


def server_properties(ports: Ports, data_dir: Path) -> dict[str, str]:
    """Every setting the dev broker runs with; one node, so every replication factor is 1."""
    return {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        # A static quorum: nothing about the controller's address is stored in the data dir,
        # so the same state dir can be started again on other ports.
        "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{ports.controller}",
        "listeners": f"PLAINTEXT://127.0.0.1:{ports.broker},CONTROLLER://127.0.0.1:{ports.controller}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{ports.broker}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        # One partition each: 50 (the default) costs seconds on the first consumer group
        # and buys nothing on a single node.
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "auto.create.topics.enable": "true",
        "delete.topic.enable": "true",
        # Tests start consumers and expect them to be assigned at once.
        "group.initial.rebalance.delay.ms": "0",
        # The machine has 2 shared cores: fewer threads than the defaults (3 and 8).
        "num.network.threads": "2",
        "num.io.threads": "4",
        # The cleaner (compacted topics) allocates its dedupe buffer up front; the default
        # 128 MiB is a quarter of the heap.
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        # A dev broker runs for days under benchmarks: keep the disk bounded.
        "log.retention.hours": "24",
        "log.segment.bytes": str(64 * 1024 * 1024),
    }


def render(props: Mapping[str, str]) -> str:
    lines = ["# Written by `python -m devbroker start`; rewritten on every start.\n"]
    lines += [f"{key}={value}\n" for key, value in props.items()]
    return "".join(lines)


def new_cluster_id() -> str:
    """A Kafka Uuid as StorageTool's random-uuid prints it: URL-safe base64, no padding."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # Kafka refuses ids starting with '-' (they read as command-line flags).
        if not text.startswith("-"):
            return text
