"""The consumers' record builders live beside their unit tests; share them, not copy them.
Also: a real Alertmanager for ``flowscope alerts``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from amhelp_consumers import AlertmanagerProcess
from promhelp_consumers import PrometheusProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "consumers"))

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def alertmanager_binary() -> Path:
    """Alertmanager built from its official source through the Go module proxy (cached under
    .state/alertmanager by alertmanager/build.sh; a cold build is a minute or two)."""
    built = subprocess.run(
        [str(REPO / "alertmanager" / "build.sh")], capture_output=True, text=True, check=False
    )
    if built.returncode != 0:
        pytest.fail(
            f"alertmanager/build.sh failed (needs Go >= 1.26 and the Go module proxy):"
            f"\n{built.stdout}\n{built.stderr}",
            pytrace=False,
        )
    return REPO / ".state" / "alertmanager" / "bin" / "alertmanager"


@pytest.fixture
def alertmanager(alertmanager_binary: Path, tmp_path: Path) -> Iterator[AlertmanagerProcess]:
    """An Alertmanager on a free loopback port, not started: the test starts it."""
    from devbroker.ports import free_port_block

    am = AlertmanagerProcess(alertmanager_binary, tmp_path, free_port_block(1))
    try:
        yield am
    finally:
        am.stop()


@pytest.fixture(scope="session")
def prometheus_binary() -> Path:
    """Prometheus built from its official source through the Go module proxy (cached under
    .state/prometheus by prometheus/build.sh)."""
    built = subprocess.run(
        [str(REPO / "prometheus" / "build.sh")], capture_output=True, text=True, check=False
    )
    if built.returncode != 0:
        pytest.fail(
            f"prometheus/build.sh failed (needs Go >= 1.26 and the Go module proxy):"
            f"\n{built.stdout}\n{built.stderr}",
            pytrace=False,
        )
    return REPO / ".state" / "prometheus" / "bin" / "prometheus"


@pytest.fixture
def prometheus(prometheus_binary: Path, tmp_path: Path) -> Iterator[PrometheusProcess]:
    """A Prometheus on a free loopback port, not started: the test names its target."""
    from devbroker.ports import free_port_block

    prom = PrometheusProcess(prometheus_binary, tmp_path, free_port_block(1))
    try:
        yield prom
    finally:
        prom.stop()
