"""The joiner's view of the cluster, built from the metadata topic's records (no I/O here).

A deleted pod is not forgotten at once: its records may still be in flight from collectors,
so it is *retired* (its interval closed at the deletion time) and purged only after a grace
period. A pod name re-used with a new uid (StatefulSets) retires the old uid the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

from enricher.join.index import MetadataIndex, canonical_ip
from flowscope.records.metadata import METADATA_VERSION, MetaCodec, NodeMeta, PodMeta, ServiceMeta

ApplyOutcome = Literal["upserted", "deleted", "invalid", "unsupported_version", "ignored"]


@dataclass
class StateCounters:
    upserts: int = 0
    tombstones: int = 0
    invalid: int = 0
    unsupported_version: int = 0
    pods_purged: int = 0


class MetadataState(MetadataIndex):
    def __init__(
        self, deleted_grace_ns: int = 300_000_000_000, early_tolerance_ns: int = 1_000_000_000
    ) -> None:
        super().__init__(early_tolerance_ns=early_tolerance_ns)
        self.deleted_grace_ns = deleted_grace_ns
        self.counters = StateCounters()
        self._codec = MetaCodec()
        self._pod_uid_by_key: dict[str, str] = {}
        self._retired: dict[str, int] = {}  # uid -> time it was retired (ns)
        # Keys ("ip:<addr>", "uid:<uid>") that became resolvable since the last drain, so the
        # joiner retries only the held-back records that wait for them. None: not tracked.
        self._changes: set[str] | None = None
        # Why the last record was refused (invalid, unsupported version), for its dead letter.
        self.last_rejection = ""

    def track_changes(self) -> None:
        self._changes = set()

    def drain_changes(self) -> set[str]:
        changes = self._changes
        if not changes:
            return set()
        self._changes = set()
        return changes

    def apply(self, key: str | None, value: bytes | None, time_ns: int) -> ApplyOutcome:
        """Apply one metadata record. ``time_ns`` is when it was written (deletion time)."""
        if value is None:
            return self._delete(key, time_ns)
        try:
            meta = self._codec.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.counters.invalid += 1
            self.last_rejection = f"invalid metadata record: {exc}"
            return "invalid"
        if meta.v > METADATA_VERSION:
            self.counters.unsupported_version += 1
            self.last_rejection = f"unsupported metadata version v={meta.v}"
            return "unsupported_version"
        self.upsert(meta, time_ns)
        self.counters.upserts += 1
        return "upserted"

    def upsert(self, meta: PodMeta | NodeMeta | ServiceMeta, time_ns: int) -> None:
        if isinstance(meta, PodMeta):
            key = meta.key()
            previous = self._pod_uid_by_key.get(key)
            if previous is not None and previous != meta.uid:
                self._retire(previous, min(time_ns, meta.start_time_ns) or time_ns)
            self._retired.pop(meta.uid, None)
            self._pod_uid_by_key[key] = meta.uid
            self.upsert_pod(meta)
            if self._changes is not None:
                self._changes.add("uid:" + meta.uid)
                self._changes.update("ip:" + canonical_ip(ip) for ip in meta.ips)
        elif isinstance(meta, NodeMeta):
            self.upsert_node(meta)
            if self._changes is not None:
                self._changes.update("ip:" + canonical_ip(ip) for ip in meta.addresses)
        else:
            self.upsert_service(meta)
            if self._changes is not None:
                self._changes.update("ip:" + canonical_ip(ip) for ip in meta.cluster_ips)

    def _delete(self, key: str | None, time_ns: int) -> ApplyOutcome:
        parts = (key or "").split("/")
        if parts[0] == "Pod" and len(parts) == 3:
            uid = self._pod_uid_by_key.pop(key or "", None)
            if uid is not None:
                self._retire(uid, time_ns)
        elif parts[0] == "Node" and len(parts) == 2:
            self.remove_node(parts[1])
        elif parts[0] == "Service" and len(parts) == 3:
            self.remove_service(parts[1], parts[2])
        else:
            self.counters.invalid += 1
            self.last_rejection = f"tombstone with an unknown key {key!r}"
            return "invalid"
        self.counters.tombstones += 1
        return "deleted"

    def _retire(self, uid: str, time_ns: int) -> None:
        pod = self.pods.get(uid)
        if pod is None:
            return
        if pod.end_time_ns is None or pod.end_time_ns > time_ns:
            self.upsert_pod(msgspec.structs.replace(pod, end_time_ns=max(time_ns, 0)))
        self._retired[uid] = time_ns

    def purge(self, now_ns: int) -> int:
        """Forget retired pods whose grace period is over. Returns how many were dropped."""
        expired = [u for u, t in self._retired.items() if now_ns - t > self.deleted_grace_ns]
        for uid in expired:
            del self._retired[uid]
            self.remove_pod(uid)
        self.counters.pods_purged += len(expired)
        return len(expired)
