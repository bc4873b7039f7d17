"""``python -m simnode sweep|list``: find or remove the leftovers of simnode runs."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from simnode.cgroup import DEFAULT_ROOT, check_root
from simnode.errors import SimNodeError
from simnode.registry import DEFAULT_STATE_DIR, Registry
from simnode.sweep import find_runs, sweep


@dataclass(frozen=True)
class Settings:
    command: str
    cgroup_root: Path
    state_dir: Path
    include_alive: bool


def settings_from(argv: list[str] | None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m simnode", description=__doc__)
    p.add_argument("command", choices=["sweep", "list"])
    p.add_argument(
        "--cgroup-root",
        type=Path,
        default=Path(os.environ.get("FLOWSCOPE_CGROUP_ROOT", str(DEFAULT_ROOT))),
        help="cgroup v2 root (env FLOWSCOPE_CGROUP_ROOT, default %(default)s)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get("FLOWSCOPE_SIMNODE_STATE_DIR", str(DEFAULT_STATE_DIR))),
        help="run registry (env FLOWSCOPE_SIMNODE_STATE_DIR, default %(default)s)",
    )
    p.add_argument(
        "--include-alive",
        action="store_true",
        help="sweep also runs whose owner process is still alive",
    )
    a = p.parse_args(argv)
    return Settings(a.command, a.cgroup_root, a.state_dir, a.include_alive)


def main(argv: list[str] | None = None) -> int:
    settings = settings_from(argv)
    try:
        check_root(settings.cgroup_root)
    except SimNodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.command == "list":
        registry = Registry(settings.state_dir)
        for run_id, objs in find_runs(settings.cgroup_root, registry).items():
            state = "alive" if registry.alive(run_id) else "dead"
            print(
                f"{run_id} {state} netns={objs.netns} links={objs.links} "
                f"cgroup_dirs={len(objs.cgroup_dirs)}"
            )
        return 0
    removed = sweep(settings.cgroup_root, settings.state_dir, include_alive=settings.include_alive)
    failed = 0
    for run_id, problems in removed.items():
        print(f"swept {run_id}" + (f": {problems}" if problems else ""))
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
