"""The simulated node on the real kernel: netns, veth, bridge, cgroups, traffic, teardown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from simnode import Cluster, NodeSpec, Pod, SimNodeError, find_run, sweep
from simnode.cgroup import DEFAULT_ROOT
from simnode.pod import SOURCE_ROOT
from simnode.registry import Registry

NODES = [NodeSpec("node-a1", zone="zone-a"), NodeSpec("node-b1", zone="zone-b")]


@pytest.fixture(autouse=True)
def _root(root_required: None) -> None:
    """Every test here creates kernel objects: root is required (a loud failure otherwise)."""


def netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def with_run_id(names: set[str], run_id: str) -> set[str]:
    return {n for n in names if run_id in n}


def assert_run_gone(run_id: str) -> None:
    left = find_run(run_id, DEFAULT_ROOT)
    assert left.empty(), f"run {run_id} left {left}"
    assert not with_run_id(netns_list(), run_id)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    assert run_id not in links.stdout
    assert not (DEFAULT_ROOT / f"fs-{run_id}").exists()


def wait_gone(pid: int, timeout_s: float = 5) -> bool:
    """True once ``pid`` no longer runs (gone, or a zombie waiting for its parent)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat[stat.rindex(")") + 2] == "Z":
            return True
        time.sleep(0.05)
    return False


def proc_cgroup_v2(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise AssertionError(f"no cgroup v2 line for {pid}")


def assert_in_pod(pid: int, pod: Pod) -> None:
    assert proc_cgroup_v2(pid) == pod.cgroup_path
    assert pod.cgroup_path.endswith(f"/kubepods/besteffort/pod{pod.uid}/{pod.container_id}")
    net_ino = os.stat(f"/proc/{pid}/ns/net").st_ino
    assert net_ino == os.stat(f"/run/netns/{pod.netns}").st_ino
    assert net_ino != os.stat("/proc/self/ns/net").st_ino


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    before = netns_list()
    with Cluster(NODES) as c:
        yield c
    assert_run_gone(c.run_id)
    assert not with_run_id(netns_list() - before, c.run_id)


def test_client_and_server_in_two_zones(cluster: Cluster, tmp_path: Path) -> None:
    server = cluster.add_pod("server", node="node-b1")
    client = cluster.add_pod("client", node="node-a1")
    assert server.zone != client.zone
    assert {server.netns, client.netns} <= netns_list()

    proc = server.start_server(8080, reply_bytes=1234)
    server.wait_listening(8080, proc=proc)
    assert_in_pod(proc.pid, server)

    count, send = 7, 3000
    summary = client.run_client(
        server.ip, 8080, count=count, send_bytes=send, expect_reply_bytes=1234
    )
    assert summary.failed == 0 and summary.errors == []
    assert summary.connections == summary.completed == count
    assert summary.bytes_sent == count * send
    assert summary.bytes_received == count * 1234
    assert summary.local_addr == client.ip
    assert len(summary.local_ports) == count and all(p > 1023 for p in summary.local_ports)

    served = server.stop_server(proc)
    assert (served.connections, served.completed, served.failed) == (count, count, 0)
    assert served.bytes_received == count * send and served.bytes_sent == count * 1234

    # A process started by the client pod is in the client's cgroup and netns too.
    sleeper = client.start(["sleep", "30"])
    deadline = time.monotonic() + 5
    while proc_cgroup_v2(sleeper.pid) != client.cgroup_path and time.monotonic() < deadline:
        time.sleep(0.02)  # the shell joins the cgroup, then execs nsenter, then sleep
    while (
        os.stat(f"/proc/{sleeper.pid}/ns/net").st_ino
        != os.stat(f"/run/netns/{client.netns}").st_ino
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    assert_in_pod(sleeper.pid, client)


def test_objects_yaml_matches_the_pods(cluster: Cluster, tmp_path: Path) -> None:
    server = cluster.add_pod("server", node="node-b1")
    client = cluster.add_pod("client", node="node-a1", labels={"app": "client", "tier": "web"})
    svc = cluster.add_service("server", selector={"app": "server"}, port=80, target_port=8080)
    path = cluster.write_objects(tmp_path / "objects.yaml")
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "v1" and doc["kind"] == "List"
    items = {(i["kind"], i["metadata"]["name"]): i for i in doc["items"]}

    for pod in (server, client):
        obj = items[("Pod", pod.name)]
        assert obj["metadata"]["uid"] == pod.uid
        assert obj["status"]["podIP"] == pod.ip
        assert obj["status"]["phase"] == "Running"
        cid = obj["status"]["containerStatuses"][0]["containerID"]
        assert cid == f"containerd://{pod.container_id}"
        # The cgroup dir really exists, and its path carries the uid and container id.
        assert (DEFAULT_ROOT / pod.cgroup_path.lstrip("/")).is_dir()
        assert pod.cgroup_path.endswith(f"/pod{obj['metadata']['uid']}/{cid.split('//')[1]}")
        node = items[("Node", obj["spec"]["nodeName"])]
        assert node["metadata"]["labels"]["topology.kubernetes.io/zone"] == pod.zone
        owner = obj["metadata"]["ownerReferences"][0]
        rs_hash = obj["metadata"]["labels"]["pod-template-hash"]
        assert owner["kind"] == "ReplicaSet"
        assert owner["name"] == f"{pod.meta.deployment}-{rs_hash}"
        assert pod.name.startswith(owner["name"] + "-")
        # The pod really has that IP on eth0 in its netns.
        shown = pod.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"]).stdout
        assert f" {pod.ip}/{cluster.pod_block.prefixlen} " in shown  # the run's /24 block

    assert items[("Pod", client.name)]["metadata"]["labels"]["tier"] == "web"
    zones = {
        n["metadata"]["labels"]["topology.kubernetes.io/zone"]
        for (kind, _), n in items.items()
        if kind == "Node"
    }
    assert zones == {"zone-a", "zone-b"}
    service = items[("Service", "server")]
    assert service["spec"]["clusterIP"] == svc.cluster_ip
    assert service["spec"]["ports"][0]["targetPort"] == 8080


def test_teardown_when_the_body_raises() -> None:
    before = netns_list()
    with pytest.raises(RuntimeError, match="boom"), Cluster(NODES) as c:
        pod = c.add_pod("web", node="node-a1")
        sleeper = pod.start(["sleep", "60"])
        assert with_run_id(netns_list(), c.run_id)
        assert (DEFAULT_ROOT / f"fs-{c.run_id}").is_dir()
        raise RuntimeError("boom")
    assert wait_gone(sleeper.pid)
    assert_run_gone(c.run_id)
    assert not with_run_id(netns_list() - before, c.run_id)
    assert not Registry().get(c.run_id)


def test_bad_cgroup_root_fails_loudly(tmp_path: Path) -> None:
    with (
        pytest.raises(SimNodeError, match="not a cgroup v2 mount"),
        Cluster(NODES, cgroup_root=tmp_path),
    ):
        pass


def test_unknown_node_names_the_valid_ones(cluster: Cluster) -> None:
    with pytest.raises(SimNodeError, match="node-a1"):
        cluster.add_pod("web", node="nowhere")


# A child process that builds a one-pod cluster, reports its run id and the pid of a process
# in the pod, then waits to be killed.
CHILD = """
import sys, time
from simnode import Cluster, NodeSpec
with Cluster([NodeSpec("n1", zone="z1")]) as c:
    pod = c.add_pod("web", node="n1")
    p = pod.start(["sleep", "300"])
    print(c.run_id, p.pid, flush=True)
    time.sleep(300)
"""


def start_child() -> tuple[subprocess.Popen[str], str, int]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, cwd=SOURCE_ROOT
    )
    assert child.stdout is not None
    line = child.stdout.readline().split()
    assert len(line) == 2, f"child failed: {line}"
    return child, line[0], int(line[1])


def test_sigterm_runs_teardown() -> None:
    child, run_id, sleeper = start_child()
    try:
        assert not find_run(run_id, DEFAULT_ROOT).empty()
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        sweep()  # whatever happened, leave nothing behind
    assert wait_gone(sleeper)
    assert_run_gone(run_id)


def test_sweep_removes_a_crashed_run_but_not_a_live_one() -> None:
    child, crashed, sleeper = start_child()
    child.kill()  # SIGKILL: no teardown at all
    child.wait()
    try:
        left = find_run(crashed, DEFAULT_ROOT)
        with Cluster(NODES, sweep_stale=False) as live:
            live.add_pod("web", node="node-a1")
            removed = sweep()
            assert live.run_id not in removed
            assert not find_run(live.run_id, DEFAULT_ROOT).empty()
            # Another simnode run starting on this machine right now may have swept the
            # crashed run first (every Cluster start sweeps); either way it must be gone.
            if crashed in removed:
                assert removed[crashed] == []
                assert left.netns and left.links and left.cgroup_dirs
    finally:
        sweep()
    assert wait_gone(sleeper)
    assert_run_gone(crashed)
    assert not Registry().get(crashed)
