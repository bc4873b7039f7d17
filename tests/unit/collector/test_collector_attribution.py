"""cgroup path -> pod uid / container id for every kubelet layout, and the resolver cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.attribution import CgroupResolver, parse_kubelet_path

UID = "6f1c9b3e-2a4d-4c8e-9f10-0123456789ab"
UID_US = UID.replace("-", "_")
CID = "a" * 12 + "0123456789abcdef" * 3 + "b" * 4  # 64 hex digits


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # cgroupfs driver, all three QoS classes
        (f"/kubepods/pod{UID}/{CID}", (UID, CID)),
        (f"/kubepods/burstable/pod{UID}/{CID}", (UID, CID)),
        (f"/kubepods/besteffort/pod{UID}/{CID}", (UID, CID)),
        # the pod's own cgroup: processes there belong to the pod, not to one container
        (f"/kubepods/burstable/pod{UID}", (UID, None)),
        # systemd driver, containerd / docker / cri-o, guaranteed and other QoS
        (
            f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/"
            f"cri-containerd-{CID}.scope",
            (UID, CID),
        ),
        (
            f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/"
            f"docker-{CID}.scope",
            (UID, CID),
        ),
        (f"/kubepods.slice/kubepods-pod{UID_US}.slice/crio-{CID}.scope", (UID, CID)),
        # cri-o's conmon monitors the container but is not it
        (f"/kubepods.slice/kubepods-pod{UID_US}.slice/crio-conmon-{CID}.scope", (UID, None)),
        # nested kubelet roots (kind, k3s, flowscope's simulated node) and sub-cgroups
        (
            f"/kubelet.slice/kubelet-kubepods.slice/kubepods-pod{UID_US}.slice/"
            f"cri-containerd-{CID}.scope",
            (UID, CID),
        ),
        (f"/fs-1234abcd/kubepods/besteffort/pod{UID}/{CID}", (UID, CID)),
        (f"/kubepods/burstable/pod{UID}/{CID}/init.scope", (UID, CID)),
        # static pods have a 32-hex-digit uid (a hash), no dashes
        (
            "/kubepods/burstable/pod0123456789abcdef0123456789abcdef/" + CID,
            ("0123456789abcdef0123456789abcdef", CID),
        ),
        # host processes
        ("/", (None, None)),
        ("/system.slice/containerd.service", (None, None)),
        ("/user.slice/user-0.slice/session-1.scope", (None, None)),
        (f"/system.slice/pod{UID}", (None, None)),  # "pod" outside kubepods is not a pod
        ("/kubepods/burstable", (None, None)),
        ("/kubepods.slice/kubepods-burstable.slice", (None, None)),
    ],
)
def test_parse_kubelet_path(path: str, expected: tuple[str | None, str | None]) -> None:
    assert parse_kubelet_path(path) == expected


class FakeTree:
    def __init__(self, tree: dict[int, str]) -> None:
        self.tree = tree
        self.walks = 0

    def __call__(self, _root: Path) -> dict[int, str]:
        self.walks += 1
        return dict(self.tree)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_resolver_caches_and_walks_again_on_a_miss() -> None:
    tree = FakeTree({1: "/", 20: f"/kubepods/pod{UID}/{CID}"})
    clock = FakeClock()
    resolver = CgroupResolver(Path("/cg"), min_walk_interval_s=1.0, walk=tree, clock=clock)
    resolver.refresh()
    assert resolver.resolve(20).pod_uid == UID
    assert resolver.resolve(1).path == "/"
    assert resolver.resolve(1).pod_uid is None
    assert tree.walks == 1

    # A new pod appears: the first miss walks again (the last walk is old enough).
    tree.tree[30] = f"/kubepods/besteffort/pod{UID}/{CID}"
    clock.now += 5
    info = resolver.resolve(30)
    assert (info.path, info.container_id) == (f"/kubepods/besteffort/pod{UID}/{CID}", CID)
    assert tree.walks == 2


def test_resolver_rate_limits_walks_and_counts_misses() -> None:
    tree = FakeTree({1: "/"})
    clock = FakeClock()
    resolver = CgroupResolver(Path("/cg"), min_walk_interval_s=1.0, walk=tree, clock=clock)
    resolver.refresh()
    for _ in range(100):
        assert resolver.resolve(99).path is None
    assert tree.walks == 2  # one walk for the unknown id, not 100 for the burst
    assert resolver.stats.misses == 100
    clock.now += 2
    resolver.resolve(99)
    assert tree.walks == 3


def test_a_pod_created_just_after_another_walk_is_still_found() -> None:
    tree = FakeTree({1: "/"})
    clock = FakeClock()
    resolver = CgroupResolver(Path("/cg"), min_walk_interval_s=1.0, walk=tree, clock=clock)
    assert resolver.resolve(98).path is None  # a gone pod's id: walks, misses
    tree.tree[40] = f"/kubepods/besteffort/pod{UID}/{CID}"  # a new pod, 10 ms later
    clock.now += 0.01
    assert resolver.resolve(40).pod_uid == UID  # not turned into "host" by the last walk


def test_resolver_keeps_answers_for_removed_cgroups() -> None:
    tree = FakeTree({1: "/", 20: f"/kubepods/pod{UID}/{CID}"})
    clock = FakeClock()
    resolver = CgroupResolver(Path("/cg"), walk=tree, clock=clock)
    resolver.refresh()
    resolver.resolve(20)
    del tree.tree[20]  # the pod is gone; its last connections close afterwards
    clock.now += 5
    resolver.resolve(77)  # some miss triggers a walk
    assert resolver.resolve(20).pod_uid == UID


def test_walk_maps_inodes_of_a_real_directory_tree(tmp_path: Path) -> None:
    from collector.attribution import walk_cgroup_tree

    leaf = tmp_path / "kubepods" / "burstable" / f"pod{UID}" / CID
    leaf.mkdir(parents=True)
    (tmp_path / "kubepods" / "cgroup.procs").write_text("")  # files are not cgroups
    found = walk_cgroup_tree(tmp_path)
    assert found[tmp_path.stat().st_ino] == "/"
    assert found[leaf.stat().st_ino] == f"/kubepods/burstable/pod{UID}/{CID}"
    assert len(found) == 5
