"""The installed package carries what its defaults point at: a wheel built from this tree,
installed into a fresh virtualenv away from the source, resolves the BPF objects, the price
table and the alert rules inside its own site-packages."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

from flowscope.resources import SHIPPED, SOURCE_ROOT


def test_wheel_ships_bpf_objects_prices_and_alert_rules(bpf_built: None, tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            str(SOURCE_ROOT),
            "-w",
            str(wheels),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("flowscope-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
        check=True,
        cwd=tmp_path,
    )
    probe = (
        "import json; from flowscope.resources import SHIPPED, shipped; "
        "print(json.dumps({n: str(shipped(n)) for n in SHIPPED}))"
    )
    done = subprocess.run(
        [str(python), "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    found = {name: Path(path) for name, path in json.loads(done.stdout).items()}
    assert set(found) == set(SHIPPED)
    for name, path in found.items():
        assert "site-packages" in path.parts and path.is_file(), (name, path)
        assert not path.is_relative_to(SOURCE_ROOT)
        assert path.read_bytes() == (SOURCE_ROOT / SHIPPED[name]).read_bytes(), name
