"""Kubernetes objects for a simulated cluster, as ``kubectl get -o yaml`` prints them.

Pure functions from the cluster's metadata to plain dicts, plus one writer. The enricher reads
the same file format it would get from a real cluster, so only the fields a real API server
fills in are used, under their real names.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from simnode.spec import Node, PodMeta, ServiceMeta

Obj = dict[str, Any]

ZONE_LABEL = "topology.kubernetes.io/zone"
REGION_LABEL = "topology.kubernetes.io/region"
HOSTNAME_LABEL = "kubernetes.io/hostname"
TEMPLATE_HASH_LABEL = "pod-template-hash"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# The kubelet writes containerID as "<runtime type>://<id>", the type being the name the CRI
# runtime reports for itself (cri-dockerd reports "docker").
CONTAINER_ID_SCHEMES = {"containerd": "containerd", "crio": "cri-o", "docker": "docker"}


def image_id(image: str) -> str:
    """status.imageID as containerd and CRI-O report it: the repository and the digest the
    tag resolved to (the digest here is made up from the name, stable per image)."""
    name = image.partition("@")[0]
    if name.rfind(":") > name.rfind("/"):
        name = name[: name.rfind(":")]
    return f"{name}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


def _uid(kind: str, namespace: str, name: str, salt: str) -> str:
    # Owners (ReplicaSet, Deployment) are not tracked objects of their own, but their uid
    # must be stable between the pod's ownerReference and the owner object.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"simnode:{salt}:{kind}:{namespace}/{name}"))


def node_object(node: Node, created: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "uid": node.uid,
            "creationTimestamp": created,
            "labels": {
                **node.labels,
                HOSTNAME_LABEL: node.name,
                "kubernetes.io/os": "linux",
                ZONE_LABEL: node.zone,
                REGION_LABEL: node.region,
            },
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": node.internal_ip},
                {"type": "Hostname", "address": node.name},
            ],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def _qos_name(pod: PodMeta) -> str:
    return {"guaranteed": "Guaranteed", "burstable": "Burstable", "besteffort": "BestEffort"}[
        pod.qos
    ]


def pod_object(pod: PodMeta, salt: str) -> Obj:
    metadata: Obj = {
        "name": pod.name,
        "namespace": pod.namespace,
        "uid": pod.uid,
        "creationTimestamp": pod.start_time,
        "labels": dict(pod.labels),
    }
    if pod.deletion_time is not None:
        # What `kubectl delete --grace-period=0` leaves until the object is gone.
        metadata["deletionTimestamp"] = pod.deletion_time
        metadata["deletionGracePeriodSeconds"] = 0
    rs = pod.replicaset
    if rs is not None:
        metadata["generateName"] = f"{rs}-"
        metadata["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": rs,
                "uid": _uid("ReplicaSet", pod.namespace, rs, salt),
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "nodeName": pod.node.name,
            **({"hostNetwork": True} if pod.host_network else {}),
            "containers": [{"name": pod.container_name, "image": pod.image}],
        },
        "status": {
            "phase": "Running",
            "qosClass": _qos_name(pod),
            "hostIP": pod.node.internal_ip,
            "hostIPs": [{"ip": pod.node.internal_ip}],
            "podIP": pod.ip,
            "podIPs": [{"ip": ip} for ip in pod.ips],
            "startTime": pod.start_time,
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [
                {
                    "name": pod.container_name,
                    "containerID": f"{CONTAINER_ID_SCHEMES[pod.runtime]}://{pod.container_id}",
                    "image": pod.image,
                    "imageID": image_id(pod.image),
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": pod.start_time}},
                }
            ],
        },
    }


def workload_objects(pods: Sequence[PodMeta], salt: str) -> list[Obj]:
    """One ReplicaSet per (namespace, deployment) and the Deployment owning it."""
    seen: dict[tuple[str, str], PodMeta] = {}
    for pod in pods:
        if pod.deployment is not None:
            seen.setdefault((pod.namespace, pod.deployment), pod)
    out: list[Obj] = []
    for (namespace, deployment), pod in sorted(seen.items()):
        rs = pod.replicaset
        assert rs is not None and pod.template_hash is not None  # set with deployment
        selector = {k: v for k, v in pod.labels.items() if k != TEMPLATE_HASH_LABEL}
        replicas = sum(1 for p in pods if (p.namespace, p.deployment) == (namespace, deployment))
        dep_uid = _uid("Deployment", namespace, deployment, salt)
        out.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": deployment,
                    "namespace": namespace,
                    "uid": dep_uid,
                    "labels": selector,
                },
                "spec": {"replicas": replicas, "selector": {"matchLabels": selector}},
            }
        )
        out.append(
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": rs,
                    "namespace": namespace,
                    "uid": _uid("ReplicaSet", namespace, rs, salt),
                    "labels": {**selector, TEMPLATE_HASH_LABEL: pod.template_hash},
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "Deployment",
                            "name": deployment,
                            "uid": dep_uid,
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "spec": {
                    "replicas": replicas,
                    "selector": {
                        "matchLabels": {**selector, TEMPLATE_HASH_LABEL: pod.template_hash}
                    },
                },
            }
        )
    return out


def _port_name(name: str) -> Obj:
    # The API server omits an empty port name rather than printing "".
    return {"name": name} if name else {}


def service_object(svc: ServiceMeta) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": svc.name, "namespace": svc.namespace, "uid": svc.uid},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": svc.cluster_ip,
            "clusterIPs": list(svc.cluster_ips),
            "ipFamilies": ["IPv4"] if svc.cluster_ip6 is None else ["IPv4", "IPv6"],
            "ipFamilyPolicy": "SingleStack" if svc.cluster_ip6 is None else "PreferDualStack",
            "selector": dict(svc.selector),
            "ports": [
                {
                    **_port_name(p.name),
                    "port": p.port,
                    "targetPort": p.target_port,
                    "protocol": p.protocol,
                }
                for p in svc.ports
            ],
        },
    }


def endpoint_slice_object(
    svc: ServiceMeta, pods: Iterable[PodMeta], salt: str, family: int = 4
) -> Obj:
    """The EndpointSlice of one address family (the controller makes one per family)."""
    name = f"{svc.name}-{svc.uid[:5]}" + ("" if family == 4 else "-v6")
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": svc.namespace,
            "uid": _uid("EndpointSlice", svc.namespace, name, salt),
            "labels": {SERVICE_NAME_LABEL: svc.name},
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "name": svc.name,
                    "uid": svc.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "addressType": "IPv4" if family == 4 else "IPv6",
        "endpoints": [
            {
                "addresses": [pod.ip if family == 4 else pod.ip6],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "nodeName": pod.node.name,
                "zone": pod.node.zone,
                "targetRef": {
                    "kind": "Pod",
                    "name": pod.name,
                    "namespace": pod.namespace,
                    "uid": pod.uid,
                },
            }
            for pod in pods
            if svc.selects(pod) and (family == 4 or pod.ip6 is not None)
        ],
        "ports": [
            {**_port_name(p.name), "port": p.target_port, "protocol": p.protocol} for p in svc.ports
        ],
    }


def cluster_objects(
    nodes: Sequence[Node],
    pods: Sequence[PodMeta],
    services: Sequence[ServiceMeta],
    *,
    created: str,
    salt: str,
    include_workloads: bool = True,
) -> Obj:
    """A ``kind: List`` holding every object, in the order kubectl would list them."""
    items: list[Obj] = [node_object(n, created) for n in nodes]
    # Deleted (terminating) pods are written as pods, but no longer count as replicas or
    # serve as endpoints.
    live = [p for p in pods if p.deletion_time is None]
    if include_workloads:
        items += workload_objects(live, salt)
    items += [pod_object(p, salt) for p in pods]
    for svc in services:
        items.append(service_object(svc))
        if include_workloads:
            items.append(endpoint_slice_object(svc, live, salt))
            if svc.cluster_ip6 is not None:
                items.append(endpoint_slice_object(svc, live, salt, family=6))
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}


class _PlainDumper(yaml.SafeDumper):
    """No ``&id001`` anchors for shared sub-dicts: kubectl never prints them."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(obj: Obj) -> str:
    return yaml.dump(obj, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False)


def write_yaml(obj: Obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: a reader watching the file never sees half a list.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(to_yaml(obj))
    tmp.replace(path)
    return path
