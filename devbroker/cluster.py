"""Several dev broker nodes as one KRaft cluster on loopback (three by default).

Each node is a combined broker+controller JVM with its own state dir (``<root>/node<i>``),
so the quorum has three voters and survives one node down, as a real cluster's does. Topics
get replication factor 3 and ``min.insync.replicas`` 2: a write with ``acks=all`` succeeds
with one node away and fails with two.

Ports, for base port P and n nodes: node i (1..n) takes P+i-1 (PLAINTEXT), C+i-1 (controller,
C = P+n unless given) and S+i-1 (SASL_SSL, when S is given).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from devbroker import config
from devbroker.broker import Broker, BrokerStatus, ClientSecurity, Progress, print_progress
from devbroker.errors import DevBrokerError


class Cluster:
    def __init__(
        self,
        state_dir: Path,
        port: int,
        controller_port: int | None = None,
        *,
        brokers: int = 3,
        sasl_ssl_port: int | None = None,
        heap_mb: int = 384,
        java: str = "/usr/bin/java",
        mvn: str = "/usr/bin/mvn",
        start_timeout_s: float = 120.0,
        stop_timeout_s: float = 30.0,
        progress: Progress = print_progress,
    ) -> None:
        if brokers < 2:
            raise ValueError(f"a cluster has 2 or more brokers, not {brokers} (use Broker)")
        self.root = Path(state_dir).resolve()
        controller = controller_port if controller_port else port + brokers
        voters = tuple((i + 1, controller + i) for i in range(brokers))
        replication = min(3, brokers)
        self.nodes = [
            Broker(
                self.root / f"node{i + 1}",
                port + i,
                controller + i,
                sasl_ssl_port=None if sasl_ssl_port is None else sasl_ssl_port + i,
                node=config.Node(i + 1, voters, replication, min_insync=replication - 1),
                security_dir=self.root / "security",
                heap_mb=heap_mb,
                java=java,
                mvn=mvn,
                start_timeout_s=start_timeout_s,
                stop_timeout_s=stop_timeout_s,
                progress=progress,
            )
            for i in range(brokers)
        ]
        self._progress = progress

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def sasl_bootstrap(self) -> str:
        return ",".join(node.sasl_bootstrap for node in self.nodes)

    def client_security(self) -> ClientSecurity:
        return self.nodes[0].client_security()

    def node(self, node_id: int) -> Broker:
        """The node with this id (1..n)."""
        if not 1 <= node_id <= len(self.nodes):
            raise ValueError(f"node id {node_id} is not in 1..{len(self.nodes)}")
        return self.nodes[node_id - 1]

    def is_running(self) -> bool:
        return all(node.is_running() for node in self.nodes)

    def status(self) -> list[BrokerStatus]:
        return [node.status() for node in self.nodes]

    def fetch(self) -> bool:
        return self.nodes[0].fetch()

    def start(self, fresh: bool = False) -> bool:
        """Start every node that is not running and wait for all; False if all were running."""
        with self._locked():
            if fresh:
                for node in self.nodes:
                    node.stop()
            elif self.is_running():
                self._progress(f"cluster already running at {self.bootstrap}")
                return False
            self.nodes[0].jars.fetch(self._progress)
            cluster_id = self._cluster_id(fresh)
            down = [node for node in self.nodes if not node.is_running()]
            for node in down:
                node.prepare(fresh, cluster_id)
            # All at once: no node is ready before a majority of the controllers is up.
            pids = [(node, node.spawn()) for node in down]
            try:
                for node, pid in pids:
                    node.await_ready(pid)
            except DevBrokerError:
                for node in self.nodes:
                    node.stop()
                raise
            return True

    def stop(self) -> bool:
        # All at once: the last node of a quorum stopped alone waits for a majority that is
        # gone and never exits cleanly (measured: killed after the 30 s timeout).
        with self._locked(), ThreadPoolExecutor(len(self.nodes)) as pool:
            stopped = list(pool.map(lambda node: node.stop(), self.nodes))
        return any(stopped)

    def _cluster_id(self, fresh: bool) -> str:
        # Every node of one cluster must be formatted with the same id.
        path = self.root / "cluster.id"
        if fresh or not path.is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            path.write_text(config.new_cluster_id() + "\n")
        return path.read_text().strip()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "devbroker-cluster.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
