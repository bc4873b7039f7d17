"""Names, address blocks, cgroup layout, readiness parsing, command wrapping, summaries."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from simnode import cgroup
from simnode.cluster import _random_block_hosts
from simnode.errors import SimNodeError
from simnode.names import (
    IFNAME_MAX,
    bridge_name,
    host_veth_name,
    netns_name,
    new_run_id,
    run_id_of,
)
from simnode.pod import Pod, parse_listening
from simnode.spec import K8S_ALPHANUMS, Node, PodMeta, k8s_suffix
from simnode.traffic.__main__ import parser
from simnode.traffic.summary import ClientSummary, ServerSummary


def test_run_ids_are_random_and_found_in_names() -> None:
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50
    rid = ids.pop()
    assert re.fullmatch(r"[0-9a-f]{6}", rid)
    for name in (bridge_name(rid), host_veth_name(rid, 123), netns_name(rid, "web-abc-xyz")):
        assert run_id_of(name) == rid
    assert run_id_of(f"fs-{rid}") == rid  # the cgroup parent dir
    for other in ("eth0", "fs-xyz123-br", "fs-abcdef0-br", "veth12", "fsabcdef-br"):
        assert run_id_of(other) is None


def test_interface_names_fit_ifnamsiz() -> None:
    rid = new_run_id()
    assert len(bridge_name(rid)) <= IFNAME_MAX
    assert len(host_veth_name(rid, 999)) <= IFNAME_MAX
    with pytest.raises(ValueError, match="too many pods"):
        host_veth_name(rid, 100000)


def test_k8s_suffix_alphabet() -> None:
    s = k8s_suffix(10)
    assert len(s) == 10 and set(s) <= set(K8S_ALPHANUMS)


def test_random_block_hosts_stay_inside_the_cidr() -> None:
    net = ipaddress.IPv4Network("10.244.0.0/16")
    hosts = _random_block_hosts(net)
    assert len(hosts) == 253
    assert all(ip in net for ip in hosts)
    assert str(hosts[0]).endswith(".2") and str(hosts[-1]).endswith(".254")
    small = _random_block_hosts(ipaddress.IPv4Network("192.168.5.0/28"))
    assert [str(ip) for ip in small][:2] == ["192.168.5.2", "192.168.5.3"]
    assert str(small[-1]) == "192.168.5.14"


def test_kubelet_cgroup_layout() -> None:
    run_dir = Path("/cg/fs-abc123")
    assert cgroup.pod_dir(run_dir, "besteffort", "u-1") == run_dir / "kubepods/besteffort/podu-1"
    assert cgroup.pod_dir(run_dir, "burstable", "u-1") == run_dir / "kubepods/burstable/podu-1"
    assert cgroup.pod_dir(run_dir, "guaranteed", "u-1") == run_dir / "kubepods/podu-1"
    assert cgroup.relative(Path("/cg"), run_dir / "kubepods") == "/fs-abc123/kubepods"


UID = "1234abcd-5678-4ef0-9abc-def012345678"
UID_US = UID.replace("-", "_")
CID = "0123456789abcdef" * 4


# Written out from the kubelet's CgroupName.ToSystemd / ToCgroupfs and each runtime's naming
# (containerd getCgroupsPath, CRI-O cgmgr, dockerd WithCgroups, runc "<prefix>-<id>.scope"):
# (driver, runtime, qos) -> (container dir, CRI-O conmon dir or None), below the run dir.
LAYOUTS = {
    ("cgroupfs", "containerd", "besteffort"): (f"kubepods/besteffort/pod{UID}/{CID}", None),
    ("cgroupfs", "crio", "burstable"): (
        f"kubepods/burstable/pod{UID}/crio-{CID}",
        f"kubepods/burstable/pod{UID}/crio-conmon-{CID}",
    ),
    ("cgroupfs", "docker", "guaranteed"): (f"kubepods/pod{UID}/{CID}", None),
    ("systemd", "containerd", "besteffort"): (
        "kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{CID}.scope",
        None,
    ),
    ("systemd", "crio", "burstable"): (
        "kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{UID_US}.slice/crio-{CID}.scope",
        "kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{UID_US}.slice/crio-conmon-{CID}.scope",
    ),
    ("systemd", "docker", "guaranteed"): (
        f"kubepods.slice/kubepods-pod{UID_US}.slice/docker-{CID}.scope",
        None,
    ),
}


@pytest.mark.parametrize(("key", "expected"), LAYOUTS.items(), ids=str)
def test_every_driver_and_runtime_layout(
    key: tuple[cgroup.CgroupDriver, cgroup.Runtime, cgroup.QosClass],
    expected: tuple[str, str | None],
) -> None:
    driver, runtime, qos = key
    run_dir = Path("/cg/fs-abc123")
    layout = cgroup.Layout(driver, runtime)
    pod = layout.pod_dir(run_dir, qos, UID)
    container, monitor = layout.container_dir(pod, CID), layout.monitor_dir(pod, CID)
    assert container == run_dir / expected[0]
    assert monitor == (None if expected[1] is None else run_dir / expected[1])
    assert container.parent == pod  # delete_pod removes the container's parent


def test_systemd_name_matches_the_kubelet_own_example() -> None:
    # CgroupName.ToSystemd's doc comment: {"kubepods", "burstable", "pod1234-abcd-5678-efgh"}
    got = cgroup.pod_dir(Path("/"), "burstable", "1234-abcd-5678-efgh", "systemd")
    assert str(got) == (
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_abcd_5678_efgh.slice"
    )


def test_unknown_layout_names_the_valid_ones() -> None:
    with pytest.raises(SimNodeError, match="'cgroupfs', 'systemd'"):
        cgroup.Layout("cgroupv1", "containerd")  # type: ignore[arg-type]
    with pytest.raises(SimNodeError, match="'containerd', 'crio', 'docker'"):
        cgroup.Layout("systemd", "podman")  # type: ignore[arg-type]


def test_check_root_rejects_a_non_cgroup_dir(tmp_path: Path) -> None:
    with pytest.raises(SimNodeError, match="not a cgroup v2 mount"):
        cgroup.check_root(tmp_path)


PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0201F40A:D3A2 0201F40A:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3 1
  sl  local_address                         remote_address                        st tx_queue
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 0000
"""


def test_parse_listening_takes_listen_sockets_only() -> None:
    assert parse_listening(PROC_NET_TCP) == {8080, 53, 443}


def test_pod_command_joins_cgroup_then_netns() -> None:
    node = Node("n", "z", "r", "172.18.0.2", "nu")
    meta = PodMeta(
        name="p",
        namespace="d",
        uid="u",
        labels={},
        node=node,
        ip="10.244.0.2",
        container_name="c",
        container_id="c" * 64,
        image="i",
        qos="besteffort",
        start_time="t",
        deployment=None,
        template_hash=None,
    )
    pod = Pod(
        meta,
        netns="fs-abc123-p",
        host_veth="fs-abc123-p0",
        cgroup_root=Path("/cg"),
        cgroup_dir=Path("/cg/fs-abc123/kubepods/besteffort/podu") / ("c" * 64),
    )
    cmd = pod.command(["echo", "a b"])
    assert cmd[:2] == ["sh", "-c"]
    assert cmd[3:] == [
        "sh",
        f"/cg/fs-abc123/kubepods/besteffort/podu/{'c' * 64}/cgroup.procs",
        "/run/netns/fs-abc123-p",
        "echo",
        "a b",
    ]
    assert "nsenter" in cmd[2] and "ip netns exec" not in cmd[2]
    assert pod.cgroup_path == f"/fs-abc123/kubepods/besteffort/podu/{'c' * 64}"
    with pytest.raises(SimNodeError):
        pod.command([])


def test_summaries_round_trip() -> None:
    c = ClientSummary(
        server="h:1", connections=2, completed=2, bytes_sent=10, local_ports=[1, 2], errors=[]
    )
    assert ClientSummary.from_json(c.to_json()) == c
    s = ServerSummary(port=1, connections=3, bytes_received=9)
    assert ServerSummary.from_json(s.to_json()) == s


@pytest.mark.parametrize(
    "argv",
    [
        ["server", "--port", "0", "--reply-bytes", "1"],
        ["server", "--port", "80", "--reply-bytes", "-1"],
        ["client", "--host", "h", "--port", "80", "--count", "0", "--send-bytes", "1"],
    ],
)
def test_traffic_cli_rejects_bad_values(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(argv)
