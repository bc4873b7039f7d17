"""Where the dev broker's files live: jars and templates in the repo, data in a state dir."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Found from this package's own location so the CLI works from any working directory.
REPO_ROOT = Path(__file__).resolve().parent.parent
BROKER_DIR = REPO_ROOT / "broker"
POM = BROKER_DIR / "pom.xml"
LOG4J_CONFIG = BROKER_DIR / "log4j2.properties"
# Under broker/target/ (git-ignored), outside the state dir, so `--fresh` keeps the jars.
JARS_ROOT = BROKER_DIR / "target"
DEFAULT_STATE_DIR = REPO_ROOT / ".state" / "kafka"


@dataclass(frozen=True)
class StateLayout:
    """The files of one broker instance, all under its state dir."""

    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def server_log(self) -> Path:
        return self.logs_dir / "server.log"

    @property
    def console_log(self) -> Path:
        # The JVM's own stdout/stderr: crashes before Log4j2 starts land here.
        return self.logs_dir / "console.log"

    @property
    def server_properties(self) -> Path:
        return self.root / "server.properties"

    @property
    def pid_file(self) -> Path:
        return self.root / "broker.pid"

    @property
    def lock_file(self) -> Path:
        return self.root / "devbroker.lock"

    @property
    def meta_properties(self) -> Path:
        # Written by the storage format; its presence means "formatted".
        return self.data_dir / "meta.properties"
