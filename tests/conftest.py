"""Fixtures shared by every test: the real Kafka broker and per-test topic names.

The broker is the project's own (``python -m devbroker``): Apache Kafka in KRaft mode from
Maven Central jars. Set FLOWSCOPE_TEST_BOOTSTRAP to run the tests against another broker.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from flowscope.topics import Topics

if TYPE_CHECKING:
    from devbroker import Broker


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            "flowscope's integration tests load BPF programs and create network namespaces: "
            "run them as root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers of a running broker; started here (and stopped at the end) if needed."""
    external = os.environ.get("FLOWSCOPE_TEST_BOOTSTRAP")
    if external:
        from flowscope.kafka import wait_for_broker

        wait_for_broker(external)
        yield external
        return
    from devbroker import Broker

    broker = Broker()
    was_running = broker.is_running()
    if not was_running:
        broker.start()
    try:
        yield broker.bootstrap
    finally:
        # Leave a broker someone else started alone; stop the one this session started.
        if not was_running:
            broker.stop()


@pytest.fixture
def topics() -> Topics:
    """Topic names under a random prefix, so tests and repeated runs never share data."""
    return Topics(prefix=f"test-{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="session")
def root_required() -> None:
    _require_root()


@pytest.fixture(scope="session")
def bpf_built(root_required: None) -> None:
    """The BPF objects (``make -C bpf``) built once per session, or a loud failure."""
    bpf = Path(__file__).resolve().parent.parent / "bpf"
    built = subprocess.run(["make", "-C", str(bpf)], capture_output=True, text=True, check=False)
    if built.returncode != 0:
        pytest.fail(
            "make -C bpf failed (needs clang, llvm, libbpf-dev, bpftool and "
            f"/sys/kernel/btf/vmlinux):\n{built.stdout}\n{built.stderr}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker per session with a SASL_SSL listener (PLAIN, SCRAM-SHA-256/512) on free
    ports, in a temporary state dir: never the shared broker. A JVM start costs seconds."""
    from devbroker import Broker
    from devbroker.ports import free_port_block

    base = free_port_block(3)
    broker = Broker(
        tmp_path_factory.mktemp("sasl-broker"),
        base,
        base + 1,
        sasl_ssl_port=base + 2,
        heap_mb=384,
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
