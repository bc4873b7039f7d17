"""One dev Kafka broker: fetch its jars, format its storage, start, wait, stop."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from devbroker import config, layout, process, tls
from devbroker.errors import DevBrokerError
from devbroker.jars import JarCache

Progress = Callable[[str], None]

LOG_TAIL_LINES = 40


def print_progress(message: str) -> None:
    print(f"devbroker: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ClientSecurity:
    """What a client needs for the SASL_SSL listener: the user, where its password is, the
    CA to trust, and a client certificate (the listener does not ask for one; an SSL client
    may still present it)."""

    username: str
    password_file: Path
    ca_file: Path
    cert_file: Path
    key_file: Path

    def password(self) -> str:
        return self.password_file.read_text().strip()

    def env(self, mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
        """The FLOWSCOPE_KAFKA_* settings every flowscope service reads (no secret values)."""
        return {
            "FLOWSCOPE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "FLOWSCOPE_KAFKA_SASL_MECHANISM": mechanism,
            "FLOWSCOPE_KAFKA_SASL_USERNAME": self.username,
            "FLOWSCOPE_KAFKA_SASL_PASSWORD_FILE": str(self.password_file),
            "FLOWSCOPE_KAFKA_SSL_CA_FILE": str(self.ca_file),
        }


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    bootstrap: str
    state_dir: Path
    kafka_version: str
    pid: int | None = None
    rss_bytes: int | None = None
    sasl_bootstrap: str | None = None


class Broker:
    """A single-node KRaft broker (broker+controller in one JVM) on 127.0.0.1.

    Every method is safe to call from several processes at once: they serialise on a lock
    file in the state dir, so two test sessions starting the broker get one broker.
    """

    def __init__(
        self,
        state_dir: Path | None = None,
        port: int = 9092,
        controller_port: int | None = None,
        *,
        sasl_ssl_port: int | None = None,
        node: config.Node = config.SINGLE_NODE,
        security_dir: Path | None = None,
        heap_mb: int = 512,
        java: str = "/usr/bin/java",
        mvn: str = "/usr/bin/mvn",
        start_timeout_s: float = 120.0,
        stop_timeout_s: float = 30.0,
        progress: Progress = print_progress,
    ) -> None:
        self.ports = config.Ports(
            port, controller_port if controller_port else port + 1, sasl_ssl_port
        )
        self.node = node
        self.state = layout.StateLayout(Path(state_dir or layout.DEFAULT_STATE_DIR).resolve())
        # The CA, certificates and SASL password; a cluster's nodes share one.
        self.security_dir = Path(security_dir or self.state.root / "security").resolve()
        self.jars = JarCache(layout.POM, layout.JARS_ROOT, mvn)
        self._heap_mb = heap_mb
        self._java = java
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._progress = progress
        self._started = 0.0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports.broker}"

    @property
    def sasl_bootstrap(self) -> str:
        if self.ports.sasl_ssl is None:
            raise DevBrokerError("this broker has no SASL_SSL listener (give sasl_ssl_port)")
        return f"127.0.0.1:{self.ports.sasl_ssl}"

    @property
    def tls_files(self) -> tls.TlsFiles:
        return tls.TlsFiles(self.security_dir / "tls")

    @property
    def _password_file(self) -> Path:
        return self.security_dir / "sasl-password"

    def client_security(self) -> ClientSecurity:
        """The SASL_SSL listener's client settings (made at the first start)."""
        files = self.tls_files
        return ClientSecurity(
            username=config.SASL_USER,
            password_file=self._password_file,
            ca_file=files.ca_cert,
            cert_file=files.client_cert,
            key_file=files.client_key,
        )

    @property
    def _marker(self) -> str:
        return str(self.state.server_properties)

    # -- public API ---------------------------------------------------------------------

    def fetch(self) -> bool:
        """Download the jars unless the lib dir is already complete. True if it downloaded."""
        with self._locked():
            return self.jars.fetch(self._progress)

    def is_running(self) -> bool:
        pid = process.read_pid(self.state.pid_file)
        return pid is not None and process.is_alive(pid, self._marker)

    def status(self) -> BrokerStatus:
        pid = process.read_pid(self.state.pid_file)
        running = pid is not None and process.is_alive(pid, self._marker)
        return BrokerStatus(
            running=running,
            bootstrap=self.bootstrap,
            state_dir=self.state.root,
            kafka_version=self.jars.version,
            pid=pid if running else None,
            rss_bytes=process.rss_bytes(pid) if running and pid is not None else None,
            sasl_bootstrap=self.sasl_bootstrap if self.ports.sasl_ssl is not None else None,
        )

    def start(self, fresh: bool = False) -> bool:
        """Start the broker and wait until it serves requests. False if it was already running.

        fresh=True stops a running broker and wipes its data before starting.
        """
        with self._locked():
            if self.is_running():
                if not fresh:
                    self._progress(f"already running at {self.bootstrap} (pid {self._pid()})")
                    return False
                self._stop_locked()
            self.jars.fetch(self._progress)
            self.prepare(fresh, config.new_cluster_id())
            self.await_ready(self.spawn())
            return True

    def stop(self) -> bool:
        """Stop the broker: SIGTERM, SIGKILL after the timeout. False if it was not running."""
        with self._locked():
            return self._stop_locked()

    # -- steps (a Cluster runs them node by node, under its own lock) ----------------------

    def prepare(self, fresh: bool, cluster_id: str) -> None:
        """Ports checked, configuration written, storage formatted unless it already is."""
        self._check_ports_free()
        if fresh and self.state.data_dir.exists():
            self._progress(f"wiping {self.state.data_dir}")
            shutil.rmtree(self.state.data_dir)
        self.state.logs_dir.mkdir(parents=True, exist_ok=True)
        sasl = self._sasl() if self.ports.sasl_ssl is not None else None
        props = config.server_properties(self.ports, self.state.data_dir, self.node, sasl)
        # The PLAIN user's password is in the file: readable by its owner only.
        self.state.server_properties.touch(mode=0o600)
        os.chmod(self.state.server_properties, 0o600)
        self.state.server_properties.write_text(config.render(props))
        if not self.state.meta_properties.exists():
            self._format(cluster_id, sasl)
        elif sasl is not None and not self._scram_marker.exists():
            raise DevBrokerError(
                f"{self.state.data_dir} was formatted without the SCRAM user; start it once "
                "with --fresh to add the SASL_SSL listener"
            )

    @property
    def _scram_marker(self) -> Path:
        return self.state.data_dir / "devbroker-scram-user"

    def _sasl(self) -> config.Sasl:
        files = tls.ensure_tls(self.tls_files.root)
        if not self._password_file.is_file():
            self.security_dir.mkdir(parents=True, exist_ok=True)
            self._password_file.touch(mode=0o600)
            # Hex: nothing that needs quoting in a JAAS line or an --add-scram argument.
            self._password_file.write_text(secrets.token_hex(16) + "\n")
        return config.Sasl(files.broker_keystore, self.client_security().password())

    def _pid(self) -> int | None:
        return process.read_pid(self.state.pid_file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state.root.mkdir(parents=True, exist_ok=True)
        with self.state.lock_file.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._progress("another devbroker command holds the lock; waiting for it")
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _check_ports_free(self) -> None:
        for port in (self.ports.broker, self.ports.controller):
            if _accepts(port):
                raise DevBrokerError(
                    f"127.0.0.1:{port} is already in use by a process that is not the devbroker "
                    f"of {self.state.root}; stop it or choose another --port"
                )

    def _jvm(self, heap_mb: int) -> list[str]:
        return [
            self._java,
            f"-Xmx{heap_mb}m",
            "-Xms64m",
            # The flags of Kafka's own kafka-run-class.sh.
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={layout.LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.state.logs_dir}",
            "-cp",
            self.jars.classpath(),
        ]

    def _format(self, cluster_id: str, sasl: config.Sasl | None) -> None:
        self._progress(f"formatting storage in {self.state.data_dir} (cluster id {cluster_id})")
        cmd = [
            *self._jvm(256),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            cluster_id,
            "--config",
            str(self.state.server_properties),
            # Kafka's own tool writes the SCRAM credentials into the metadata log.
            *(config.scram_arguments(sasl.password) if sasl is not None else []),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).splitlines()[-LOG_TAIL_LINES:])
            if sasl is not None:
                output = output.replace(sasl.password, "<password>")
            raise DevBrokerError(f"formatting storage failed ({result.returncode}):\n{output}")
        if sasl is not None:
            self._scram_marker.write_text(config.SASL_USER + "\n")

    def spawn(self) -> int:
        """Start the JVM (configured by prepare) without waiting; returns its pid."""
        cmd = [*self._jvm(self._heap_mb), "kafka.Kafka", str(self.state.server_properties)]
        self._started = time.monotonic()
        pid = process.spawn_detached(cmd, self.state.console_log, self.state.root)
        self.state.pid_file.write_text(f"{pid}\n")
        self._progress(
            f"started Kafka {self.jars.version} node {self.node.node_id} (pid {pid}); "
            f"waiting for {self.bootstrap}"
        )
        return pid

    def await_ready(self, pid: int) -> None:
        """Wait until the node serves requests; kill it if it does not."""
        try:
            self._wait_ready(pid)
        except DevBrokerError:
            # A half-started broker holding the ports would make every retry fail too.
            process.terminate(pid, self._marker, 5.0)
            self.state.pid_file.unlink(missing_ok=True)
            raise
        waited = time.monotonic() - self._started
        self._progress(f"node {self.node.node_id} ready at {self.bootstrap} after {waited:.1f}s")

    def kill(self) -> bool:
        """SIGKILL the node (a crash, for fault tests). False if it was not running."""
        pid = self._pid()
        if pid is None or not process.is_alive(pid, self._marker):
            return False
        process.kill(pid, self._marker)
        self.state.pid_file.unlink(missing_ok=True)
        self._progress(f"killed node {self.node.node_id} (pid {pid})")
        return True

    def restart(self) -> None:
        """Start a stopped or killed node again on its existing data and wait for it."""
        with self._locked():
            if self.is_running():
                return
            self.await_ready(self.spawn())

    def _wait_ready(self, pid: int) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        next_note = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if not process.is_alive(pid, self._marker):
                raise DevBrokerError(self._failure("the broker process exited during start-up"))
            # Probe the port first: librdkafka logs every refused connection to stderr.
            if _accepts(self.ports.broker) and _answers_metadata(self.bootstrap, self.node.node_id):
                return
            if time.monotonic() >= next_note:
                waited = self._start_timeout_s - (deadline - time.monotonic())
                self._progress(f"still waiting for {self.bootstrap} ({waited:.0f}s)")
                next_note += 10.0
            time.sleep(0.25)
        raise DevBrokerError(
            self._failure(f"the broker did not answer within {self._start_timeout_s:.0f}s")
        )

    def _failure(self, what: str) -> str:
        errors = process.error_lines(self.state.server_log, 10)
        cause = ("--- errors in server.log ---\n" + "\n".join(errors) + "\n") if errors else ""
        return (
            f"{what}.\n{cause}--- last lines of {self.state.server_log} ---\n"
            f"{process.tail(self.state.server_log, LOG_TAIL_LINES)}\n"
            f"--- last lines of {self.state.console_log} ---\n"
            f"{process.tail(self.state.console_log, 15)}"
        )

    def _stop_locked(self) -> bool:
        pid = self._pid()
        if pid is None or not process.is_alive(pid, self._marker):
            self.state.pid_file.unlink(missing_ok=True)
            return False
        self._progress(f"stopping broker (pid {pid})")
        clean = process.terminate(pid, self._marker, self._stop_timeout_s)
        self.state.pid_file.unlink(missing_ok=True)
        if clean:
            self._progress("stopped")
        else:
            self._progress(f"no clean exit within {self._stop_timeout_s:.0f}s; killed")
        return True


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _answers_metadata(bootstrap: str, node_id: int) -> bool:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        metadata = admin.list_topics(timeout=2.0)
    except KafkaException:
        return False
    # A KRaft broker lists itself only once it is registered and unfenced.
    return node_id in metadata.brokers
