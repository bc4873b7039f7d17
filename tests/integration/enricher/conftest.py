"""Fixtures of the enricher's integration tests: a real kube-apiserver (kube/apiserver.sh) and
readers of the metadata topic. The broker fixtures come from tests/conftest.py."""

# The kubernetes client types every model field as Optional and leaves its config loaders
# untyped; the tests' assertions are what checks those values.
# mypy: disable-error-code="union-attr, no-untyped-call"

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubehelp_enricher import TopicReader
from kubernetes import client, config

from flowscope.topics import Topics

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "kube" / "apiserver.sh"


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[Path]:
    """A running kube-apiserver; started here (and stopped at the end) if it was not running."""
    if shutil.which("etcd") is None:
        pytest.fail(
            "etcd is not installed: apt-get install etcd-server (Debian's etcd)", pytrace=False
        )
    if shutil.which("go") is None and not (REPO / ".state/kube/bin/kube-apiserver").exists():
        pytest.fail("Go >= 1.26 is needed to build kube-apiserver (kube/build.sh)", pytrace=False)
    was_running = subprocess.run([SCRIPT, "status"], capture_output=True).returncode == 0
    if not was_running:
        proc = subprocess.run([SCRIPT, "start"], capture_output=True, text=True, timeout=3600)
        assert proc.returncode == 0, f"kube/apiserver.sh start failed:\n{proc.stdout}{proc.stderr}"
    path = Path(
        subprocess.run([SCRIPT, "kubeconfig"], capture_output=True, text=True).stdout.strip()
    )
    try:
        yield path
    finally:
        if not was_running:
            subprocess.run([SCRIPT, "stop"], capture_output=True, timeout=120)


def api_client(kubeconfig: Path) -> client.ApiClient:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return client.ApiClient(cfg)


@pytest.fixture
def api(kubeconfig: Path) -> client.ApiClient:
    return api_client(kubeconfig)


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture
def nodes(api: client.ApiClient) -> Iterator[list[str]]:
    """Names to create nodes under; every node with one of them is deleted afterwards."""
    names = [f"node-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    try:
        yield names
    finally:
        core = client.CoreV1Api(api)
        for name in names:
            try:
                core.delete_node(name)
            except client.ApiException as exc:
                if exc.status != 404:
                    raise


@pytest.fixture
def reader(kafka_bootstrap: str, topics: Topics) -> Iterator[Callable[[], TopicReader]]:
    made: list[TopicReader] = []

    def make() -> TopicReader:
        made.append(TopicReader(kafka_bootstrap, topics.metadata))
        return made[-1]

    yield make
    for r in made:
        r.close()
