"""The simulated node with every cgroup layout: the kernel puts the pods' processes where
the layout says, CRI-O's conmon cgroup sits beside the container's, and deleting a pod,
closing a cluster and sweeping a crashed run remove every layout's directories."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from simnode import Cluster, NodeSpec, find_run, sweep
from simnode.cgroup import CGROUP_DRIVERS, RUNTIMES, CgroupDriver, Runtime
from simnode.pod import SOURCE_ROOT

NODES = [NodeSpec("node-a1", zone="zone-a")]
LAYOUTS = [(d, r) for d in CGROUP_DRIVERS for r in RUNTIMES]


@pytest.fixture(autouse=True)
def _root(root_required: None) -> None:
    """Every test here creates kernel objects: root is required (a loud failure otherwise)."""


def proc_cgroup_v2(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise AssertionError(f"no cgroup v2 line for {pid}")


@pytest.mark.parametrize(("driver", "runtime"), LAYOUTS, ids=[f"{d}-{r}" for d, r in LAYOUTS])
def test_processes_run_in_the_layout_and_delete_removes_it(
    driver: CgroupDriver, runtime: Runtime
) -> None:
    with Cluster(NODES, cgroup_driver=driver, runtime=runtime) as cluster:
        pod = cluster.add_pod("web", node="node-a1", qos="burstable")
        sleeper = pod.start(["sleep", "60"])
        # cat's own cgroup, as the kernel reports it.
        done = pod.run(["cat", "/proc/self/cgroup"])
        assert f"0::{pod.cgroup_path}" in done.stdout.splitlines()
        assert cluster.cgroup_layout.driver == driver and pod.meta.runtime == runtime
        if driver == "systemd":
            assert pod.cgroup_path.split("/")[2:5] == [
                "kubepods.slice",
                "kubepods-burstable.slice",
                f"kubepods-burstable-pod{pod.uid.replace('-', '_')}.slice",
            ]
        else:
            assert pod.cgroup_path.split("/")[2:5] == ["kubepods", "burstable", f"pod{pod.uid}"]
        if runtime == "crio":
            assert pod.monitor_cgroup_dir is not None
            assert pod.monitor_cgroup_dir.parent == pod.cgroup_dir.parent
            assert pod.monitor_cgroup_dir.name.startswith(f"crio-conmon-{pod.container_id}")
            assert pod.monitor_cgroup_dir.is_dir()
        else:
            assert pod.monitor_cgroup_dir is None
        cluster.delete_pod(pod.name)
        assert sleeper.wait(5) != 0
        assert not pod.cgroup_dir.parent.exists()  # the pod's cgroup, conmon's with it
        run_id = cluster.run_id
    assert find_run(run_id, cluster.cgroup_root).empty()


# A run killed with SIGKILL, with a systemd + CRI-O tree (slices, scopes, a conmon scope).
CRASHING_CHILD = """
import time
from simnode import Cluster, NodeSpec
with Cluster([NodeSpec("n1", zone="z1")], cgroup_driver="systemd", runtime="crio") as c:
    pod = c.add_pod("web", node="n1")
    p = pod.start(["sleep", "300"])
    print(c.run_id, c.cgroup_root, p.pid, flush=True)
    time.sleep(300)
"""


def test_sweep_removes_a_crashed_systemd_run() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_CHILD], stdout=subprocess.PIPE, text=True, cwd=SOURCE_ROOT
    )
    assert child.stdout is not None
    root = Path("/nonexistent")
    try:
        run_id, root_text, _pid = child.stdout.readline().split()
        root = Path(root_text)
        left = find_run(run_id, root)
        assert any(d.name.startswith("crio-conmon-") for d in left.cgroup_dirs), left
        child.kill()  # no teardown at all
        child.wait()
        removed = sweep(root)
        # Another run starting now may have swept it first; either way it must be gone.
        assert removed.get(run_id, []) == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if root.is_dir():
            sweep(root)  # whatever happened, leave nothing behind
    assert find_run(run_id, root).empty()
