"""Kubernetes objects (as ``kubectl get -o yaml`` prints them) -> slim metadata.

Accepts a ``kind: List`` with ``items``, multi-document YAML, or both. Owner objects
(ReplicaSets, Jobs) are used only to resolve a pod's workload; they are not published.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import yaml

from enricher import EnricherError
from flowscope.records.metadata import (
    ContainerMeta,
    Meta,
    NodeMeta,
    PodMeta,
    ServiceMeta,
    ServicePort,
)

ZONE_LABELS = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")
REGION_LABELS = ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region")
_NODE_FIELD_LABELS = frozenset((*ZONE_LABELS, *REGION_LABELS, "kubernetes.io/hostname"))
NODE_ADDRESS_TYPES = ("InternalIP", "ExternalIP")
# CronJob controllers name their Jobs `<cronjob>-<scheduled time in minutes>`.
_CRONJOB_JOB_NAME = re.compile(r"^(?P<cronjob>.+)-\d+$")
_RFC3339 = re.compile(
    r"^(?P<base>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(?P<frac>\d+))?(?P<tz>Z|[+-]\d{2}:\d{2})$"
)

Obj = Mapping[str, Any]


class ObjectFileError(EnricherError):
    """The file is not a readable set of Kubernetes objects."""


@dataclass
class ParsedObjects:
    """What a file held: the metadata to publish, and a count per Kubernetes kind seen."""

    metas: list[Meta] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)  # why an object was not usable


def parse_time_ns(value: Any) -> int | None:
    """RFC 3339 (``2024-05-01T10:00:00Z``, fractions to the nanosecond) -> Unix ns."""
    if value is None:
        return None
    if isinstance(value, datetime):  # PyYAML turns unquoted timestamps into datetimes
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000
    match = _RFC3339.match(str(value))
    if match is None:
        raise ObjectFileError(f"not an RFC 3339 time: {value!r}")
    tz = "+00:00" if match["tz"] == "Z" else match["tz"]
    whole = datetime.fromisoformat(match["base"] + tz)
    frac = (match["frac"] or "").ljust(9, "0")[:9]
    # Integer arithmetic keeps nanoseconds that a float timestamp would round away.
    return int(whole.timestamp()) * 1_000_000_000 + int(frac)


@dataclass(frozen=True)
class PodFields:
    """What a pod's metadata carries beyond what the join needs: its labels (on by default)
    and the values of these annotation keys (none by default)."""

    labels: bool = True
    annotations: frozenset[str] = frozenset()

    def pick_annotations(self, meta: Mapping[str, Any]) -> dict[str, str]:
        if not self.annotations:
            return {}
        found = meta.get("annotations") or {}
        return {k: str(found[k]) for k in sorted(self.annotations) if k in found}


ALL_LABELS_NO_ANNOTATIONS = PodFields()


def iter_objects(documents: Iterable[Any]) -> Iterator[Obj]:
    """Flatten documents and ``kind: List`` wrappers into single objects."""
    for doc in documents:
        if doc is None:
            continue
        if not isinstance(doc, Mapping):
            raise ObjectFileError(f"expected a Kubernetes object, got {type(doc).__name__}")
        if doc.get("kind") == "List" or (doc.get("kind", "").endswith("List") and "items" in doc):
            yield from iter_objects(doc.get("items") or [])
        else:
            yield doc


def load_objects(text: str) -> list[Obj]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return list(iter_objects(yaml.load_all(text, Loader=loader)))
    except yaml.YAMLError as exc:
        raise ObjectFileError(f"not valid YAML: {exc}") from exc


def parse_objects(
    objects: Iterable[Obj], fields: PodFields = ALL_LABELS_NO_ANNOTATIONS
) -> ParsedObjects:
    objs = list(objects)
    out = ParsedObjects()
    owners = _OwnerTable(objs)
    services_of: dict[str, set[str]] = {}
    for obj in objs:
        if obj.get("kind") == "EndpointSlice":
            svc, uids = endpointslice_backends(obj)
            for uid in uids:
                services_of.setdefault(uid, set()).add(svc)
    for obj in objs:
        kind = str(obj.get("kind", "?"))
        out.seen[kind] += 1
        try:
            if kind == "Pod":
                uid = str(_meta(obj).get("uid", ""))
                out.metas.append(pod_meta(obj, owners, services_of.get(uid, ()), fields))
            elif kind == "Node":
                out.metas.append(node_meta(obj))
            elif kind == "Service":
                out.metas.append(service_meta(obj))
        except (KeyError, TypeError, ValueError) as exc:
            name = _meta(obj).get("name", "?")
            out.skipped.append(f"{kind}/{name}: {type(exc).__name__}: {exc}")
    return out


def parse_text(text: str, fields: PodFields = ALL_LABELS_NO_ANNOTATIONS) -> ParsedObjects:
    return parse_objects(load_objects(text), fields)


def _meta(obj: Obj) -> Obj:
    m = obj.get("metadata")
    return m if isinstance(m, Mapping) else {}


def _controller_ref(obj: Obj) -> Obj | None:
    refs = _meta(obj).get("ownerReferences") or []
    for ref in refs:
        if ref.get("controller"):
            return dict(ref)
    return dict(refs[0]) if refs else None


class Owners(Protocol):
    """Where owner objects (ReplicaSets, Jobs) are found by kind, namespace and name."""

    def get(self, kind: str, namespace: str, name: str) -> Obj | None: ...


OWNER_KINDS = ("ReplicaSet", "Job")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class _OwnerTable:
    """ReplicaSets and Jobs in the file, by (namespace, name), to follow owner chains."""

    def __init__(self, objs: Iterable[Obj]) -> None:
        self._by_key: dict[tuple[str, str, str], Obj] = {}
        for obj in objs:
            kind = obj.get("kind")
            if kind in ("ReplicaSet", "Job"):
                m = _meta(obj)
                self._by_key[(str(kind), m.get("namespace", "default"), m.get("name", ""))] = obj

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self._by_key.get((kind, namespace, name))


def workload_of(pod: Obj, owners: Owners) -> tuple[str, str]:
    """(kind, name) of the workload that runs this pod; a bare pod is its own workload."""
    m = _meta(pod)
    namespace = m.get("namespace", "default")
    ref = _controller_ref(pod)
    if ref is None:
        return "Pod", str(m["name"])
    kind, name = str(ref["kind"]), str(ref["name"])
    if kind == "ReplicaSet":
        rs = owners.get("ReplicaSet", namespace, name)
        if rs is not None:
            parent = _controller_ref(rs)
            return (str(parent["kind"]), str(parent["name"])) if parent else (kind, name)
        # The ReplicaSet is not in the file: Deployments name theirs `<deployment>-<hash>`
        # where the hash is also the pod's pod-template-hash label.
        template_hash = (m.get("labels") or {}).get("pod-template-hash")
        if template_hash and name.endswith(f"-{template_hash}"):
            return "Deployment", name[: -len(template_hash) - 1]
        return kind, name
    if kind == "Job":
        job = owners.get("Job", namespace, name)
        if job is not None:
            parent = _controller_ref(job)
            return (str(parent["kind"]), str(parent["name"])) if parent else (kind, name)
        cron = _CRONJOB_JOB_NAME.match(name)
        return ("CronJob", cron["cronjob"]) if cron else (kind, name)
    return kind, name


def parse_end_time_ns(value: Any) -> int | None:
    """An end bound from a Kubernetes time. Most of them (deletionTimestamp, finishedAt) are
    whole seconds: the event happened somewhere in that second, so the bound is the second's
    end. Cutting a pod's interval at the second's start would take its last connections away
    (they would look like nobody's, or like the next holder's of the IP)."""
    ns = parse_time_ns(value)
    if ns is None:
        return None
    whole = (
        value.microsecond == 0
        if isinstance(value, datetime)
        else (m := _RFC3339.match(str(value))) is not None and not m["frac"]
    )
    return ns + 1_000_000_000 if whole else ns


def _pod_end_ns(pod: Obj) -> int | None:
    m = _meta(pod)
    if m.get("deletionTimestamp"):
        return parse_end_time_ns(m["deletionTimestamp"])
    status = pod.get("status") or {}
    if status.get("phase") not in ("Succeeded", "Failed"):
        return None
    finished = [
        parse_end_time_ns(cs["state"]["terminated"]["finishedAt"])
        for cs in status.get("containerStatuses") or []
        if (cs.get("state") or {}).get("terminated", {}).get("finishedAt")
    ]
    ends = [f for f in finished if f is not None]
    return max(ends) if ends else None


def pod_meta(
    pod: Obj,
    owners: Owners | None = None,
    services: Iterable[str] = (),
    fields: PodFields = ALL_LABELS_NO_ANNOTATIONS,
) -> PodMeta:
    m = _meta(pod)
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    ips = [str(p["ip"]) for p in status.get("podIPs") or [] if p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [str(status["podIP"])]
    # IPs are assigned after the kubelet starts the pod; creation time is the fallback bound.
    start = parse_time_ns(status.get("startTime")) or parse_time_ns(m.get("creationTimestamp"))
    kind, name = workload_of(pod, owners or _OwnerTable(()))
    return PodMeta(
        uid=str(m["uid"]),
        name=str(m["name"]),
        namespace=str(m.get("namespace", "default")),
        node=spec.get("nodeName"),
        ips=ips,
        host_network=bool(spec.get("hostNetwork", False)),
        start_time_ns=start or 0,
        end_time_ns=_pod_end_ns(pod),
        workload_kind=kind,
        workload_name=name,
        labels=(
            {str(k): str(v) for k, v in (m.get("labels") or {}).items()} if fields.labels else {}
        ),
        services=sorted(set(services)),
        annotations=fields.pick_annotations(m),
        containers=_containers(spec, status),
    )


def _containers(spec: Mapping[str, Any], status: Mapping[str, Any]) -> list[ContainerMeta]:
    """App containers with the image the runtime resolved (status.imageID) where it says."""
    image_ids = {
        str(cs.get("name")): str(cs["imageID"])
        for cs in status.get("containerStatuses") or []
        if cs.get("imageID")
    }
    return [
        ContainerMeta(
            name=str(c["name"]),
            image=str(c.get("image") or ""),
            image_id=image_ids.get(str(c["name"])),
        )
        for c in spec.get("containers") or []
        if c.get("name")
    ]


def endpointslice_backends(eps: Obj) -> tuple[str, set[str]]:
    """(service name, uids of the pods behind it) of one EndpointSlice."""
    m = _meta(eps)
    service = str((m.get("labels") or {}).get(SERVICE_NAME_LABEL) or "")
    uids = {
        str(ref["uid"])
        for ep in eps.get("endpoints") or []
        if (ref := ep.get("targetRef") or {}).get("kind") == "Pod" and ref.get("uid")
    }
    return service, uids if service else set()


def _first_label(labels: Mapping[str, Any], names: Iterable[str]) -> str | None:
    for name in names:
        if labels.get(name):
            return str(labels[name])
    return None


def node_meta(node: Obj) -> NodeMeta:
    m = _meta(node)
    labels = m.get("labels") or {}
    addresses = [
        str(a["address"])
        for a in (node.get("status") or {}).get("addresses") or []
        if a.get("type") in NODE_ADDRESS_TYPES
    ]
    return NodeMeta(
        name=str(m["name"]),
        zone=_first_label(labels, ZONE_LABELS),
        region=_first_label(labels, REGION_LABELS),
        addresses=addresses,
        # Zone, region and host name are fields already; the rest (racks, pools...) travel.
        labels={str(k): str(v) for k, v in labels.items() if k not in _NODE_FIELD_LABELS},
    )


def service_meta(svc: Obj) -> ServiceMeta:
    m = _meta(svc)
    spec = svc.get("spec") or {}
    ips = [str(ip) for ip in spec.get("clusterIPs") or []]
    if not ips and spec.get("clusterIP"):
        ips = [str(spec["clusterIP"])]
    return ServiceMeta(
        name=str(m["name"]),
        namespace=str(m.get("namespace", "default")),
        # Headless services ("None") have no virtual IP: their clients dial pods directly.
        cluster_ips=[ip for ip in ips if ip != "None"],
        ports=[
            ServicePort(port=int(p["port"]), protocol=str(p.get("protocol", "TCP")))
            for p in spec.get("ports") or []
        ],
    )
