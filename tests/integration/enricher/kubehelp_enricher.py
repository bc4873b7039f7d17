"""Helpers for the tests that drive a real kube-apiserver and the metadata publisher."""

# The kubernetes client types every model field as Optional and leaves its config loaders
# untyped; the tests' assertions are what checks those values.
# mypy: disable-error-code="union-attr, no-untyped-call"

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from kubernetes import client

from enricher.join.follower import MetadataFollower
from enricher.join.state import MetadataState
from enricher.publish.kubeobjects import ALL_LABELS_NO_ANNOTATIONS, PodFields
from enricher.publish.lease import LeaseConfig
from enricher.publish.live import WatchOptions, WatchPublisher
from flowscope.records.metadata import MetaCodec
from flowscope.topics import Topics

CODEC = MetaCodec()


def wait_for(cond: Callable[[], Any], what: str, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class TopicReader:
    """The metadata topic as the joiner sees it: latest value per key, and every record."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.follower = MetadataFollower(bootstrap, topic)
        self.latest: dict[str, bytes | None] = {}
        self.history: list[tuple[str, bytes | None]] = []
        self.state = MetadataState()
        self.follower.load(self._apply, timeout_s=30)

    def _apply(self, key: str | None, value: bytes | None, t: int) -> None:
        assert key is not None
        self.latest[key] = value
        self.history.append((key, value))
        self.state.apply(key, value, t)

    def poll(self) -> None:
        self.follower.poll(self._apply)

    def meta(self, key: str) -> Any:
        self.poll()
        value = self.latest.get(key)
        return CODEC.decode(value) if value is not None else None

    def close(self) -> None:
        self.follower.close()


def node_object(name: str, zone: str, ip: str) -> client.V1Node:
    return client.V1Node(
        metadata=client.V1ObjectMeta(
            name=name,
            labels={"topology.kubernetes.io/zone": zone, "topology.kubernetes.io/region": "r1"},
        ),
        status=client.V1NodeStatus(addresses=[client.V1NodeAddress(type="InternalIP", address=ip)]),
    )


def create_pod(
    core: client.CoreV1Api, ns: str, name: str, node: str, ip: str, owner: dict[str, str] | None
) -> client.V1Pod:
    refs = (
        [
            client.V1OwnerReference(
                api_version="apps/v1",
                kind=owner["kind"],
                name=owner["name"],
                uid=owner["uid"],
                controller=True,
            )
        ]
        if owner
        else None
    )
    pod = core.create_namespaced_pod(
        ns,
        client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, labels={"app": name}, owner_references=refs),
            spec=client.V1PodSpec(
                node_name=node, containers=[client.V1Container(name="main", image="busybox")]
            ),
        ),
    )
    # No kubelet runs: the test plays its part and reports the pod running with an IP.
    core.patch_namespaced_pod_status(
        name,
        ns,
        {
            "status": {
                "phase": "Running",
                "startTime": "2026-01-01T00:00:00Z",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
            }
        },
    )
    return pod


def start_publisher(
    api: client.ApiClient,
    bootstrap: str,
    topics: Topics,
    lease_ns: str | None,
    name: str = "p",
    pod_fields: PodFields = ALL_LABELS_NO_ANNOTATIONS,
) -> tuple[WatchPublisher, threading.Event, threading.Thread]:
    lease = (
        LeaseConfig(
            namespace=lease_ns,
            name="flowscope-metadata-publisher",
            identity=f"{name}-{uuid.uuid4().hex[:4]}",
            lease_duration_s=4,
            renew_deadline_s=3,
            retry_period_s=1,
        )
        if lease_ns
        else None
    )
    options = WatchOptions(lease=lease, stats_interval_s=5, pod_fields=pod_fields)
    pub = WatchPublisher(api, bootstrap, topics, options)
    stop = threading.Event()
    thread = threading.Thread(target=pub.run, args=(stop,), daemon=True)
    thread.start()
    return pub, stop, thread
