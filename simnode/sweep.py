"""Finding and removing a run's kernel objects: the one teardown path.

``Cluster.close`` and ``sweep`` both end in ``remove_run``, so a crashed run is cleaned exactly
like a finished one: kill every process (the run's cgroup subtree, then anything else still in
its netns, because a live process keeps a deleted netns and its veth alive), delete the netns
(the veth pairs go with them), the host-side veths and the bridge, the Service rules
(nftables tables, iptables chains), then rmdir the cgroups.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from simnode import cgroup, kubeproxy, network
from simnode.names import run_id_of, run_tag
from simnode.registry import DEFAULT_STATE_DIR, Registry

KILL_WAIT_S = 5.0
GONE_WAIT_S = 3.0


@dataclass
class RunObjects:
    """What exists of one run right now."""

    run_id: str
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    cgroup_dirs: list[Path] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.netns or self.links or self.cgroup_dirs)


def find_run(run_id: str, cgroup_root: Path) -> RunObjects:
    found = RunObjects(run_id)
    found.netns = [n for n in network.list_netns() if run_id_of(n) == run_id]
    found.links = [n for n in network.list_links() if run_id_of(n) == run_id]
    run_dir = cgroup_root / run_tag(run_id)
    if run_dir.is_dir():
        found.cgroup_dirs = [Path(d) for d, _, _ in os.walk(run_dir)]
    return found


def find_runs(cgroup_root: Path, registry: Registry) -> dict[str, RunObjects]:
    """Every run with something left: objects named fs-<run id>, or a registry entry."""
    ids = {run_id_of(n) for n in network.list_netns()}
    ids |= {run_id_of(n) for n in network.list_links()}
    if cgroup_root.is_dir():
        ids |= {run_id_of(n) for n in os.listdir(cgroup_root)}
    ids |= kubeproxy.run_ids_with_rules()
    ids |= set(registry.run_ids())
    return {rid: find_run(rid, cgroup_root) for rid in sorted(i for i in ids if i is not None)}


def _kill_netns_processes(netns: list[str]) -> None:
    for name in netns:
        for pid in network.netns_pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def remove_run(run_id: str, cgroup_root: Path, extra_netns: list[str] | None = None) -> list[str]:
    """Remove everything of one run. Returns the problems (empty when all is gone)."""
    problems: list[str] = []
    run_dir = cgroup_root / run_tag(run_id)
    cgroup.kill_tree(run_dir)
    objects = find_run(run_id, cgroup_root)
    netns = sorted(set(objects.netns) | set(extra_netns or []))
    _kill_netns_processes(netns)
    if not cgroup.wait_empty(run_dir, KILL_WAIT_S):
        problems.append(f"processes still in {run_dir}: {cgroup.procs(run_dir)}")
    for name in netns:
        if (err := network.delete_netns(name)) is not None:
            problems.append(err)
    # Veths normally vanish with their netns; the bridge goes last.
    for name in sorted(network.list_links(), key=lambda n: n.endswith("-br")):
        if run_id_of(name) == run_id and (err := network.delete_link(name)) is not None:
            problems.append(err)
    problems += kubeproxy.remove_rules(run_id)
    problems += cgroup.remove_tree(run_dir)
    left = _wait_empty(run_id, cgroup_root, GONE_WAIT_S)
    if not left.empty() and not problems:
        problems.append(f"left behind: {left}")
    return problems


def _wait_empty(run_id: str, cgroup_root: Path, timeout_s: float) -> RunObjects:
    # The kernel destroys a deleted netns's devices asynchronously: give it a moment.
    deadline = time.monotonic() + timeout_s
    while True:
        left = find_run(run_id, cgroup_root)
        if left.empty() or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def sweep(
    cgroup_root: Path = cgroup.DEFAULT_ROOT,
    state_dir: Path = DEFAULT_STATE_DIR,
    *,
    include_alive: bool = False,
) -> dict[str, list[str]]:
    """Remove the leftovers of runs whose owner process is gone.

    Runs still owned by a live process are left alone unless ``include_alive``. Returns
    ``{run_id: problems}`` for every run it removed.
    """
    registry = Registry(state_dir)
    # Objects are listed before liveness is read: a run registers before it creates anything,
    # so a run whose objects we saw is either registered by now or finished.
    runs = find_runs(cgroup_root, registry)
    removed: dict[str, list[str]] = {}
    for run_id in runs:
        if not include_alive and registry.alive(run_id):
            continue
        record = registry.get(run_id)
        root = Path(record.cgroup_root) if record is not None else cgroup_root
        removed[run_id] = remove_run(run_id, root)
        if not removed[run_id]:
            registry.unregister(run_id)
    return removed
