"""server.properties for a KRaft node (combined broker+controller) on loopback: one node, or
one of a cluster of three; optionally with a SASL_SSL listener for clients."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

NODE_ID = 1

# The SASL user every devbroker creates (SCRAM-SHA-256, SCRAM-SHA-512 and PLAIN).
SASL_USER = "flowscope"
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class Ports:
    broker: int
    controller: int
    # The SASL_SSL listener; None: PLAINTEXT only.
    sasl_ssl: int | None = None

    def __post_init__(self) -> None:
        named = [("broker", self.broker), ("controller", self.controller)]
        if self.sasl_ssl is not None:
            named.append(("sasl_ssl", self.sasl_ssl))
        for name, port in named:
            if not 1 <= port <= 65535:
                raise ValueError(f"{name} port {port} is not in 1..65535")
        if len({port for _, port in named}) != len(named):
            raise ValueError(f"the broker's ports must differ ({', '.join(map(str, named))})")


@dataclass(frozen=True)
class Node:
    """One node's place in its cluster: its id, every controller (voter), and the cluster's
    replication (1 for a single node; 3 and min.insync.replicas 2 for three)."""

    node_id: int = NODE_ID
    voters: tuple[tuple[int, int], ...] = ()  # (node id, controller port); () = just this one
    replication: int = 1
    min_insync: int = 1


SINGLE_NODE = Node()


@dataclass(frozen=True)
class Sasl:
    """The SASL_SSL listener's TLS keystore and the PLAIN user's password (SCRAM users are
    stored in the metadata log at format time, not here)."""

    keystore: Path
    password: str


def server_properties(
    ports: Ports, data_dir: Path, node: Node = SINGLE_NODE, sasl: Sasl | None = None
) -> dict[str, str]:
    """Every setting a dev broker node runs with."""
    voters = node.voters or ((node.node_id, ports.controller),)
    listeners = {"PLAINTEXT": ports.broker, "CONTROLLER": ports.controller}
    protocols = {"CONTROLLER": "PLAINTEXT", "PLAINTEXT": "PLAINTEXT"}
    if ports.sasl_ssl is not None:
        listeners["SASL_SSL"] = ports.sasl_ssl
        protocols["SASL_SSL"] = "SASL_SSL"
    rf, isr = str(node.replication), str(node.min_insync)
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        # A static quorum: nothing about the controller's address is stored in the data dir,
        # so the same state dir can be started again on other ports.
        "controller.quorum.voters": ",".join(f"{i}@127.0.0.1:{port}" for i, port in voters),
        "listeners": ",".join(f"{name}://127.0.0.1:{port}" for name, port in listeners.items()),
        "advertised.listeners": ",".join(
            f"{name}://127.0.0.1:{port}" for name, port in listeners.items() if name != "CONTROLLER"
        ),
        "controller.listener.names": "CONTROLLER",
        # Brokers talk to each other in the clear on loopback; clients get the SASL_SSL one.
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": ",".join(f"{k}:{v}" for k, v in protocols.items()),
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        "default.replication.factor": rf,
        "min.insync.replicas": isr,
        "offsets.topic.replication.factor": rf,
        # One partition each: 50 (the default) costs seconds on the first consumer group
        # and buys nothing on a single node.
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": isr,
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": isr,
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
    if node.replication > 1:
        # A restarted node catches up and leads again by itself, as in a real cluster.
        props["unclean.leader.election.enable"] = "false"
        props["leader.imbalance.check.interval.seconds"] = "10"
    if sasl is not None:
        props.update(_sasl_properties(sasl))
    return props


def _sasl_properties(sasl: Sasl) -> dict[str, str]:
    prefix = "listener.name.sasl_ssl."
    # PLAIN checks against the users listed in its JAAS line; SCRAM against the metadata log.
    plain_users = f'user_{SASL_USER}="{sasl.password}"'
    return {
        "sasl.enabled.mechanisms": ",".join(SASL_MECHANISMS),
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(sasl.keystore),
        "ssl.client.auth": "none",
        prefix + "plain.sasl.jaas.config": (
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};"
        ),
        prefix + "scram-sha-256.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        prefix + "scram-sha-512.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
    }


def scram_arguments(password: str) -> list[str]:
    """StorageTool's --add-scram arguments: the SASL user under both SCRAM mechanisms."""
    args: list[str] = []
    for mechanism in SASL_MECHANISMS:
        if mechanism.startswith("SCRAM-"):
            args += ["--add-scram", f"{mechanism}=[name={SASL_USER},password={password}]"]
    return args


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
