"""``publish --watch``: keep the metadata topic in step with a live cluster.

While this replica leads (see lease.py), one ResourceWatch per kind lists and watches the
API server; their snapshots and events go through one queue to this thread, which owns the
ClusterModel and the producer, so no state is shared between threads. When every kind has
been listed once, keys that the topic holds but the cluster does not (objects deleted while
no publisher ran) get tombstones. On losing the Lease the watches stop and the producer is
flushed before another replica takes over.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from enricher.join.follower import MetadataFollower
from enricher.publish.cluster import WATCHED_KINDS, Change, ClusterModel
from enricher.publish.kubeobjects import ALL_LABELS_NO_ANNOTATIONS, PodFields
from enricher.publish.kubewatch import Backoff, EventType, Obj, ResourceWatch
from enricher.publish.lease import LeaseConfig, LeaseElector
from flowscope.kafka import RecordProducer, TopicSpec, ensure_topics
from flowscope.probes import Probe
from flowscope.topics import Topics

log = logging.getLogger("enricher.publish.publisher")


@dataclass(frozen=True)
class WatchOptions:
    lease: LeaseConfig | None  # None: no election, publish at once (a single replica)
    watch_timeout_s: int = 300
    request_timeout_s: float = 30.0
    pod_fields: PodFields = ALL_LABELS_NO_ANNOTATIONS  # labels, chosen annotations
    stats_interval_s: float = 30.0
    backoff: Backoff = field(default_factory=Backoff)


def list_functions(api_client: Any) -> dict[str, Any]:
    """The list/watch call of every watched kind, cluster-wide."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    return {
        "ReplicaSet": client.AppsV1Api(api_client).list_replica_set_for_all_namespaces,
        "Job": client.BatchV1Api(api_client).list_job_for_all_namespaces,
        "Node": core.list_node,
        "Service": core.list_service_for_all_namespaces,
        "EndpointSlice": client.DiscoveryV1Api(api_client).list_endpoint_slice_for_all_namespaces,
        "Pod": core.list_pod_for_all_namespaces,
    }


class WatchPublisher:
    def __init__(
        self,
        api_client: Any,
        bootstrap_servers: str,
        topics: Topics,
        options: WatchOptions,
        producer_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self._api_client = api_client
        self._bootstrap = bootstrap_servers
        self._topics = topics
        self.options = options
        self._producer_overrides = producer_overrides
        self.synced = threading.Event()  # this replica leads and has pruned after a full list
        self.model: ClusterModel | None = None
        self.watches: dict[str, ResourceWatch] = {}
        self.elector: LeaseElector | None = None
        self.terms = 0  # times this replica started leading
        self.producer: RecordProducer | None = None  # the current term's, for /metrics
        self.produced = 0
        # Ready while standing by or once synced; live while leading and its loop turns.
        self.probe = Probe("publisher")

    def run(self, stop: threading.Event) -> None:
        ensure_topics(self._bootstrap, [TopicSpec(self._topics.metadata, compacted=True)])
        lease = self.options.lease
        if lease is None:
            self.lead(stop)
            return
        self.probe.set_ready()
        from kubernetes import client

        self.elector = LeaseElector(client.CoordinationV1Api(self._api_client), lease)
        log.info("standing by for lease %s/%s as %s", lease.namespace, lease.name, lease.identity)
        self.elector.run(stop, self.lead)

    def _read_back(self, model: ClusterModel) -> int:
        """What the topic holds now: written again only if it changed, pruned if it is gone."""

        def keep(key: str | None, value: bytes | None, _t: int) -> None:
            if key is None:
                return
            if value is None:
                model.published.pop(key, None)
            else:
                model.published[key] = value

        follower = MetadataFollower(self._bootstrap, self._topics.metadata)
        try:
            return follower.load(keep)
        finally:
            follower.close()

    def lead(self, lost: threading.Event) -> None:
        self.terms += 1
        self.probe.set_not_ready("leading, listing the cluster")
        self.probe.beat()
        model = self.model = ClusterModel(self.options.pod_fields)
        read = self._read_back(model)
        log.info("leading: %d records read back from %s", read, self._topics.metadata)
        producer = self.producer = RecordProducer(self._bootstrap, self._producer_overrides)
        inbox: queue.Queue[tuple[str, str, Any, Any]] = queue.Queue()

        def on_snapshot(kind: str, items: list[Obj]) -> None:
            inbox.put(("snapshot", kind, items, None))

        def on_event(kind: str, type_: EventType, obj: Obj) -> None:
            inbox.put(("event", kind, type_, obj))

        o = self.options
        self.watches = {
            kind: ResourceWatch(
                kind,
                fn,
                on_snapshot,
                on_event,
                watch_timeout_s=o.watch_timeout_s,
                request_timeout_s=o.request_timeout_s,
                backoff=o.backoff,
            )
            for kind, fn in list_functions(self._api_client).items()
        }
        for watch in self.watches.values():
            watch.start()
        listed: set[str] = set()
        next_stats = time.monotonic() + o.stats_interval_s
        try:
            while not lost.is_set():
                self.probe.beat()
                try:
                    item = inbox.get(timeout=0.1)
                except queue.Empty:
                    producer.poll(0)
                else:
                    what, kind, a, b = item
                    if what == "snapshot":
                        changes = model.snapshot(kind, a)
                        listed.add(kind)
                    else:
                        changes = model.event(kind, a, b)
                    self._produce(producer, changes)
                    if not self.synced.is_set() and listed >= set(WATCHED_KINDS):
                        pruned = model.prune()
                        self._produce(producer, pruned)
                        producer.flush(30)
                        self.synced.set()
                        self.probe.set_ready()
                        log.info(
                            "publisher synced: %d pods, %d nodes, %d services; %d stale keys "
                            "tombstoned",
                            len(model.objects["Pod"]),
                            len(model.objects["Node"]),
                            len(model.objects["Service"]),
                            len(pruned),
                        )
                if time.monotonic() >= next_stats:
                    self.log_stats(producer)
                    next_stats = time.monotonic() + o.stats_interval_s
        finally:
            for watch in self.watches.values():
                watch.stop()
            left = producer.flush(30)
            if left:
                log.warning("%d metadata records undelivered when leading ended", left)
            self.synced.clear()
            self.probe.rest()
            if self.options.lease is not None:
                self.probe.set_ready()  # standing by again
            self.log_stats(producer, final=True)

    def _produce(self, producer: RecordProducer, changes: list[Change]) -> None:
        for key, value in changes:
            if producer.produce(self._topics.metadata, value, key=key):
                self.produced += 1

    def metrics(self, producer: RecordProducer | None = None) -> dict[str, int]:
        if producer is None:
            producer = self.producer
        out: dict[str, int] = {"publisher_terms_total": self.terms}
        if self.model is not None:
            c = self.model.counters
            out |= {
                "publisher_records_written_total": c.written,
                "publisher_tombstones_total": c.tombstones,
                "publisher_unchanged_total": c.unchanged,
                "publisher_invalid_objects_total": c.invalid,
            }
        for kind, w in self.watches.items():
            k = kind.lower()
            out |= {
                f"publisher_{k}_lists_total": w.counters.lists,
                f"publisher_{k}_relists_gone_total": w.counters.relists_gone,
                f"publisher_{k}_watches_total": w.counters.watches,
                f"publisher_{k}_events_total": w.counters.events,
                f"publisher_{k}_bookmarks_total": w.counters.bookmarks,
                f"publisher_{k}_errors_total": w.counters.errors,
            }
        if self.elector is not None:
            e = self.elector.counters
            out |= {
                "publisher_lease_acquired_total": e.acquired,
                "publisher_lease_lost_total": e.lost,
                "publisher_lease_errors_total": e.errors,
            }
        if producer is not None:
            p = producer.counters
            out |= {
                "publisher_produce_delivered_total": p.delivered,
                "publisher_produce_delivery_failed_total": p.delivery_failed,
                "publisher_produce_dropped_buffer_full_total": p.dropped_buffer_full,
            }
        return out

    def log_stats(self, producer: RecordProducer | None = None, final: bool = False) -> None:
        line = " ".join(f"{k}={v}" for k, v in self.metrics(producer).items())
        log.info("%s %s", "final counters:" if final else "counters:", line)
