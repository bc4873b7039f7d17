"""The whole pipeline against a SASL_SSL broker (SCRAM-SHA-512, a private CA): every
connection of the test in the enriched topic once and counted once in the pair metrics;
and each service, given a wrong password or a CA that did not sign the broker, stops at
start with one line naming the cause and no secret in its output."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.readout import TopicReader
from demo.services import PipelineSettings, publish_metadata, running_pipeline
from devbroker import Broker
from devbroker.tls import make_ca
from flowscope import kafka_security
from flowscope.codec import JsonCodec
from flowscope.records import EnrichedTcpConnection, TcpPairMetric
from flowscope.topics import Topics
from simnode import Cluster, NodeSpec

N_CONNECTIONS = 10
PORT = 8080
WINDOW_S = 3.0
GRACE_S = 2.0


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with Cluster([NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]) as c:
        yield c


def test_pipeline_over_sasl_ssl(
    root_required: None, sasl_broker: Broker, topics: Topics, cluster: Cluster, tmp_path: Path
) -> None:
    bootstrap = sasl_broker.sasl_bootstrap
    env = sasl_broker.client_security().env("SCRAM-SHA-512")
    # This process's readers use the same settings as the services, read the same way.
    kafka_security.register(bootstrap, kafka_security.from_env(env))
    server = cluster.add_pod("checkout", node="node-b1", namespace="shop")
    client = cluster.add_pod("frontend", node="node-a1", namespace="shop")
    publish_metadata(bootstrap, topics, cluster.write_objects(tmp_path / "objects.yaml"), env)
    settings = PipelineSettings(
        bootstrap=bootstrap,
        topics=topics,
        node_name="sim-host",
        log_dir=tmp_path / "logs",
        window_s=WINDOW_S,
        grace_s=GRACE_S,
        extra_env=env,
    )
    enriched_reader = TopicReader(bootstrap, topics.enriched_tcp)
    metrics_reader = TopicReader(bootstrap, topics.metrics_tcp_pairs)

    def ours_enriched(es: list[EnrichedTcpConnection]) -> list[EnrichedTcpConnection]:
        return [e for e in es if (e.client.address, e.server.address) == (client.ip, server.ip)]

    def ours_metrics(ms: list[TcpPairMetric]) -> list[TcpPairMetric]:
        pair = ("shop/Deployment/frontend", "shop/Deployment/checkout")
        return [m for m in ms if (m.client_workload, m.server_workload) == pair]

    try:
        with running_pipeline(settings) as services:
            proc = server.start_server(PORT, reply_bytes=500)
            server.wait_listening(PORT, proc=proc)
            summary = client.run_client(
                server.ip, PORT, count=N_CONNECTIONS, send_bytes=1000, expect_reply_bytes=500
            )
            server.stop_server(proc)
            assert summary.completed == N_CONNECTIONS, summary
            enriched = ours_enriched(
                enriched_reader.read_until(
                    JsonCodec(EnrichedTcpConnection),
                    lambda es: len(ours_enriched(es)) >= 2 * N_CONNECTIONS,
                    timeout_s=90,
                )
            )
            metrics = ours_metrics(
                metrics_reader.read_until(
                    JsonCodec(TcpPairMetric),
                    lambda ms: sum(m.connections for m in ours_metrics(ms)) >= N_CONNECTIONS,
                    timeout_s=WINDOW_S + GRACE_S + 90,
                )
            )
            # Past the next window close: a window published twice would show here.
            time.sleep(WINDOW_S + GRACE_S + 1)
            metric_codec = JsonCodec(TcpPairMetric)
            later = [m for v in metrics_reader.read(2) for m in metric_codec.decode_batch(v)]
            metrics += ours_metrics(later)
            codec = JsonCodec(EnrichedTcpConnection)
            enriched += ours_enriched(
                [e for v in enriched_reader.read(1) for e in codec.decode_batch(v)]
            )
            for svc in services.values():
                svc.check_alive()
                log = svc.log_text()
                assert sasl_broker.client_security().password() not in log, svc.name
            assert "SASL_SSL, SCRAM-SHA-512 as flowscope" in services["collector"].log_text()
    finally:
        enriched_reader.close()
        metrics_reader.close()

    ports = set(summary.local_ports)
    assert sorted(e.client.port for e in enriched) == sorted([*ports, *ports]), "once per end"
    assert {e.observer_role for e in enriched} == {"client", "server"}
    assert all(e.server.pod_name == server.name for e in enriched)
    assert sum(m.connections for m in metrics) == N_CONNECTIONS, metrics
    windows = [(m.window_start_ns, m.window_end_ns) for m in metrics]
    assert len(windows) == len(set(windows)), f"a window was published twice: {windows}"


SERVICES = {
    "collector": ["-m", "collector"],
    "enricher": ["-m", "enricher", "join"],
    "processors": ["-m", "processors", "worker"],
}


def _start_fails(name: str, env: dict[str, str]) -> list[str]:
    import os

    done = subprocess.run(
        [sys.executable, *SERVICES[name]],
        env={**os.environ, **env, "FLOWSCOPE_TOPIC_PREFIX": "refused"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0, f"{name} started:\n{done.stdout}{done.stderr}"
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_refused_at_start_with_the_cause(
    root_required: None, bpf_built: None, sasl_broker: Broker, service: str, tmp_path: Path
) -> None:
    security = sasl_broker.client_security()
    env = {"FLOWSCOPE_BOOTSTRAP_SERVERS": sasl_broker.sasl_bootstrap, **security.env()}
    wrong = tmp_path / "wrong-password"
    wrong.write_text("wrong-password-value\n")
    bad_password = {**env, "FLOWSCOPE_KAFKA_SASL_PASSWORD_FILE": str(wrong)}
    lines = _start_fails(service, bad_password)
    named = [line for line in lines if "the credentials were refused" in line]
    assert len(named) == 1, lines
    assert "SCRAM-SHA-512 as flowscope" in named[0]
    assert not any("wrong-password-value" in line for line in lines), lines

    other_ca = make_ca(tmp_path / "other-ca", "not the broker's CA")
    untrusted = {**env, "FLOWSCOPE_KAFKA_SSL_CA_FILE": str(other_ca.ca_cert)}
    lines = _start_fails(service, untrusted)
    named = [line for line in lines if "the TLS handshake failed" in line]
    assert len(named) == 1, lines
    assert "certificate verify failed" in named[0] and str(other_ca.ca_cert) in named[0]
    assert not any(security.password() in line for line in lines), lines
