"""The publisher's picture of the cluster, fed by watches, turned into metadata changes. No I/O.

Watches report snapshots (after every list) and single changes of Pods, Nodes, Services,
EndpointSlices and the owners that name a pod's workload (ReplicaSets, Jobs). Each call
returns the metadata records to write: ``(key, value)`` with a None value for a tombstone.
A record identical to what was last written under its key is not written again (nodes and
pods change status fields the metadata does not carry every few seconds).

Only what the join needs is kept of each object (see :func:`slim`), so 10,000 pods cost a
few MiB, not the hundreds that full objects would.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from enricher.publish.kubeobjects import (
    ALL_LABELS_NO_ANNOTATIONS,
    OWNER_KINDS,
    ObjectFileError,
    PodFields,
    endpointslice_backends,
    node_meta,
    pod_meta,
    service_meta,
)
from flowscope.records.metadata import Meta, MetaCodec, PodMeta, node_key, pod_key, service_key

Obj = dict[str, Any]
Change = tuple[str, bytes | None]

WATCHED_KINDS = ("ReplicaSet", "Job", "Node", "Service", "EndpointSlice", "Pod")


def _pick(d: Any, *keys: str) -> Obj:
    return {k: d[k] for k in keys if isinstance(d, dict) and d.get(k) is not None}


def slim(kind: str, obj: Obj, fields: PodFields = ALL_LABELS_NO_ANNOTATIONS) -> Obj:
    """The fields of ``obj`` that kubeobjects reads for this kind, and of a pod's annotations
    only those ``fields`` carries; nothing else is kept."""
    meta = obj.get("metadata") or {}
    out: Obj = {"kind": kind}
    if kind == "Pod":
        status = obj.get("status") or {}
        out["metadata"] = _pick(
            meta,
            "name",
            "namespace",
            "uid",
            "labels",
            "ownerReferences",
            "creationTimestamp",
            "deletionTimestamp",
        )
        kept = fields.pick_annotations(meta)
        if kept:
            out["metadata"]["annotations"] = kept
        out["spec"] = _pick(obj.get("spec"), "nodeName", "hostNetwork")
        out["status"] = _pick(status, "phase", "podIP", "podIPs", "startTime")
        finished = [
            {
                "state": {
                    "terminated": _pick((cs.get("state") or {}).get("terminated"), "finishedAt")
                }
            }
            for cs in status.get("containerStatuses") or []
            if (cs.get("state") or {}).get("terminated")
        ]
        if finished:
            out["status"]["containerStatuses"] = finished
    elif kind == "Node":
        out["metadata"] = _pick(meta, "name", "labels")
        out["status"] = _pick(obj.get("status"), "addresses")
    elif kind == "Service":
        out["metadata"] = _pick(meta, "name", "namespace")
        out["spec"] = _pick(obj.get("spec"), "clusterIP", "clusterIPs", "ports")
    elif kind == "EndpointSlice":
        out["metadata"] = _pick(meta, "name", "namespace", "labels")
        out["endpoints"] = [
            {"targetRef": _pick(ep.get("targetRef"), "kind", "uid")}
            for ep in obj.get("endpoints") or []
        ]
    else:  # owners
        out["metadata"] = _pick(meta, "name", "namespace", "ownerReferences")
    return out


def object_key(kind: str, obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    if kind == "Node":
        return f"Node/{meta.get('name', '')}"
    return f"{kind}/{meta.get('namespace', 'default')}/{meta.get('name', '')}"


@dataclass
class ModelCounters:
    written: int = 0
    tombstones: int = 0
    unchanged: int = 0  # events that changed nothing the metadata carries
    invalid: int = 0  # objects that could not be converted (counted, skipped)
    last_invalid: str | None = None


class ClusterModel:
    def __init__(self, fields: PodFields = ALL_LABELS_NO_ANNOTATIONS) -> None:
        self.fields = fields
        self.objects: dict[str, dict[str, Obj]] = {k: {} for k in WATCHED_KINDS}
        # What the metadata topic holds now, per key (the last value written or read back).
        self.published: dict[str, bytes] = {}
        self.counters = ModelCounters()
        self._codec = MetaCodec()
        self._pod_key_by_uid: dict[str, str] = {}
        self._slices_by_uid: dict[str, set[str]] = {}
        self._slice_backends: dict[str, tuple[str, str, set[str]]] = {}  # key -> ns, svc, uids

    # -- Owners protocol (for kubeobjects.workload_of) --------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self.objects.get(kind, {}).get(f"{kind}/{namespace}/{name}")

    # -- input ------------------------------------------------------------------------------

    def snapshot(self, kind: str, items: Iterable[Obj], now_ns: int | None = None) -> list[Change]:
        """A complete list of ``kind``: anything known before and absent now was deleted."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        fresh = {object_key(kind, o): slim(kind, o, self.fields) for o in items}
        changes: list[Change] = []
        for key in [k for k in self.objects[kind] if k not in fresh]:
            changes += self._remove(kind, key, now_ns)
        for key, obj in fresh.items():
            changes += self._put(kind, key, obj)
        if kind in OWNER_KINDS:
            changes += self._republish_pods(self.objects["Pod"])
        return changes

    def event(self, kind: str, type_: str, obj: Obj, now_ns: int | None = None) -> list[Change]:
        now_ns = time.time_ns() if now_ns is None else now_ns
        key = object_key(kind, obj)
        if type_ == "DELETED":
            if kind == "Pod" and key in self.objects["Pod"]:
                # Keep the deletion time with the final state, so the IP interval closes
                # where the API server says, not where the tombstone happens to land.
                self.objects["Pod"][key] = slim(kind, obj, self.fields)
            return self._remove(kind, key, now_ns)
        return self._put(kind, key, slim(kind, obj, self.fields))

    # -- bookkeeping ------------------------------------------------------------------------

    def _put(self, kind: str, key: str, obj: Obj) -> list[Change]:
        self.objects[kind][key] = obj
        if kind == "Pod":
            uid = str(obj["metadata"].get("uid", ""))
            self._pod_key_by_uid[uid] = key
            return self._write_pod(key)
        if kind == "Node":
            return self._write_meta(key, obj, node_meta)
        if kind == "Service":
            return self._write_meta(key, obj, service_meta)
        if kind == "EndpointSlice":
            return self._slice_changed(key, obj)
        return self._republish_pods(self._pods_owned_by(kind, key))

    def _remove(self, kind: str, key: str, now_ns: int) -> list[Change]:
        obj = self.objects[kind].pop(key, None)
        if obj is None:
            return []
        if kind == "Pod":
            changes = []
            # The pod's last state, with its IP interval closed, then its tombstone.
            meta = self._pod_meta(obj)
            if meta is not None:
                if meta.end_time_ns is None:
                    meta = self._closed(meta, now_ns)
                changes += self._write(key, meta)
            self._pod_key_by_uid.pop(str(obj["metadata"].get("uid", "")), None)
            return changes + self._tombstone(key)
        if kind in ("Node", "Service"):
            return self._tombstone(key)
        if kind == "EndpointSlice":
            return self._slice_changed(key, None)
        return self._republish_pods(self._pods_owned_by(kind, key))

    @staticmethod
    def _closed(meta: PodMeta, now_ns: int) -> PodMeta:
        return msgspec.structs.replace(meta, end_time_ns=max(now_ns, meta.start_time_ns))

    def _pods_owned_by(self, kind: str, key: str) -> list[str]:
        _, namespace, name = key.split("/", 2)
        return [
            k
            for k, pod in self.objects["Pod"].items()
            if pod["metadata"].get("namespace", "default") == namespace
            and any(
                r.get("kind") == kind and r.get("name") == name
                for r in pod["metadata"].get("ownerReferences") or []
            )
        ]

    def _republish_pods(self, keys: Iterable[str]) -> list[Change]:
        changes: list[Change] = []
        for key in list(keys):
            changes += self._write_pod(key)
        return changes

    def _slice_changed(self, key: str, obj: Obj | None) -> list[Change]:
        old = self._slice_backends.pop(key, None)
        affected = set(old[2]) if old else set()
        if obj is not None:
            service, uids = endpointslice_backends(obj)
            namespace = str(obj["metadata"].get("namespace", "default"))
            self._slice_backends[key] = (namespace, service, uids)
            affected |= uids
        else:
            self.objects["EndpointSlice"].pop(key, None)
        for uid in affected:
            slices = self._slices_by_uid.setdefault(uid, set())
            if obj is not None and uid in self._slice_backends[key][2]:
                slices.add(key)
            else:
                slices.discard(key)
            if not slices:
                del self._slices_by_uid[uid]
        return self._republish_pods(
            k for uid in affected if (k := self._pod_key_by_uid.get(uid)) is not None
        )

    def services_of(self, uid: str) -> list[str]:
        return sorted({self._slice_backends[k][1] for k in self._slices_by_uid.get(uid, ())})

    def _pod_meta(self, pod: Obj) -> PodMeta | None:
        try:
            uid = str(pod["metadata"].get("uid", ""))
            return pod_meta(pod, self, self.services_of(uid), self.fields)
        except (KeyError, TypeError, ValueError, ObjectFileError) as exc:
            self.counters.invalid += 1
            self.counters.last_invalid = f"{object_key('Pod', pod)}: {exc}"
            return None

    def _write_pod(self, key: str) -> list[Change]:
        pod = self.objects["Pod"].get(key)
        meta = self._pod_meta(pod) if pod is not None else None
        return self._write(key, meta) if meta is not None else []

    def _write_meta(self, key: str, obj: Obj, convert: Any) -> list[Change]:
        try:
            meta = convert(obj)
        except (KeyError, TypeError, ValueError, ObjectFileError) as exc:
            self.counters.invalid += 1
            self.counters.last_invalid = f"{key}: {exc}"
            return []
        return self._write(key, meta)

    def _write(self, key: str, meta: Meta) -> list[Change]:
        value = self._codec.encode(meta)
        if self.published.get(key) == value:
            self.counters.unchanged += 1
            return []
        self.published[key] = value
        self.counters.written += 1
        return [(key, value)]

    def _tombstone(self, key: str) -> list[Change]:
        if self.published.pop(key, None) is None:
            return []
        self.counters.tombstones += 1
        return [(key, None)]

    def stale_keys(self) -> list[str]:
        """Keys the topic holds that no watched object has (deleted while nobody published)."""
        live = {pod_key(*k.split("/", 2)[1:]) for k in self.objects["Pod"]}
        live |= {node_key(k.split("/", 1)[1]) for k in self.objects["Node"]}
        live |= {service_key(*k.split("/", 2)[1:]) for k in self.objects["Service"]}
        return sorted(k for k in self.published if k not in live)

    def prune(self) -> list[Change]:
        changes: list[Change] = []
        for key in self.stale_keys():
            changes += self._tombstone(key)
        return changes
