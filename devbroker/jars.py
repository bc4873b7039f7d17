"""The Kafka jars: resolved by Maven from broker/pom.xml into a lib dir, once per pom."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from devbroker.errors import DevBrokerError

_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}
_STAMP = ".complete"


def pinned_kafka_version(pom: Path) -> str:
    """The `kafka.version` property of the pom: the single place the version is pinned."""
    node = ET.parse(pom).getroot().find("m:properties/m:kafka.version", _POM_NS)
    if node is None or not (node.text or "").strip():
        raise DevBrokerError(f"{pom} has no <kafka.version> property")
    return (node.text or "").strip()


class JarCache:
    """A lib dir holding every runtime jar of the pinned Kafka, marked complete by a stamp.

    The stamp holds the pom's hash: editing the pom (a new version, another dependency)
    makes the cache incomplete, and the next fetch resolves it again. Maven's own ~/.m2
    cache makes that re-resolution fast.
    """

    def __init__(self, pom: Path, root: Path, mvn: str) -> None:
        self._pom = pom
        self._mvn = mvn
        self.version = pinned_kafka_version(pom)
        self.lib_dir = root / f"kafka-{self.version}" / "lib"

    def _pom_digest(self) -> str:
        return hashlib.sha256(self._pom.read_bytes()).hexdigest()

    def is_complete(self) -> bool:
        stamp = self.lib_dir / _STAMP
        return stamp.is_file() and stamp.read_text().strip() == self._pom_digest()

    def classpath(self) -> str:
        # Java expands "dir/*" itself; no shell is involved.
        return str(self.lib_dir / "*")

    def fetch(self, progress: Callable[[str], None]) -> bool:
        """Make the lib dir complete. Returns False when it already was (nothing run)."""
        if self.is_complete():
            return False
        if shutil.which(self._mvn) is None:
            raise DevBrokerError(
                f"Maven not found at {self._mvn!r}: install it (apt-get install maven)"
            )
        # Resolve into a scratch dir and rename, so an interrupted fetch never looks complete.
        staging = self.lib_dir.with_name("lib.partial")
        shutil.rmtree(staging, ignore_errors=True)
        progress(
            f"fetching Apache Kafka {self.version} jars from Maven Central into {self.lib_dir} ..."
        )
        cmd = [
            self._mvn,
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(self._pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
            raise DevBrokerError(f"`{' '.join(cmd)}` failed ({result.returncode}):\n{tail}")
        core = staging / f"kafka_2.13-{self.version}.jar"
        if not core.is_file():
            raise DevBrokerError(f"Maven finished but {core.name} is missing from {staging}")
        shutil.rmtree(self.lib_dir, ignore_errors=True)
        staging.rename(self.lib_dir)
        (self.lib_dir / _STAMP).write_text(self._pom_digest() + "\n")
        jars = sum(1 for _ in self.lib_dir.glob("*.jar"))
        progress(f"fetched {jars} jars for Kafka {self.version}")
        return True
