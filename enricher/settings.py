"""The enricher's settings: one frozen object, built once in ``__main__``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from enricher.classify import Network
from enricher.kubeobjects import PodFields
from enricher.labels import DEFAULT_POD_LABELS, LabelSelection
from flowscope.kafka_security import PLAINTEXT, KafkaSecurity
from flowscope.topics import DEFAULT_PREFIX, Topics


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = DEFAULT_PREFIX
    consumer_group: str = "flowscope-enricher"
    metadata_file: Path | None = None  # publish only
    prune: bool = True  # publish: tombstone keys the file no longer has
    stats_interval_s: float = 10.0
    metrics_port: int = 0  # join, publish --watch: Prometheus /metrics; 0: no endpoint
    # Raw records per consume() call (about: messages are asked for as many as the last
    # batch's messages held records on average).
    batch_size: int = 2000
    # Enriched records per produced message (a JSON array; 1: one record per message, no
    # array). Records are grouped per output partition within one consumed batch, so this
    # adds no waiting of its own (the processors and demo readers decode both forms).
    output_batch_records: int = 256
    # consume() returns when the batch is full or this time is up: at low rates it is the
    # delay the enricher adds, at high rates batches fill first. Idle cost: 50 wakeups/s.
    poll_timeout_s: float = 0.02
    # How long a deleted pod still names its IP (records from collectors arrive late).
    deleted_pod_grace_s: float = 300.0
    metadata_load_timeout_s: float = 60.0
    # Records whose pod or peer address has no metadata yet wait this long for it (0: never).
    holdback_s: float = 5.0
    holdback_max_records: int = 200_000  # beyond this, records are emitted unresolved at once
    # This cluster's pod and service CIDRs: only unknown addresses inside them are held back.
    # Empty: every unknown private address may be a pod, so all of them are.
    cluster_cidrs: tuple[Network, ...] = ()
    # publish --watch: a live cluster through the API server instead of a file.
    watch: bool = False
    kubeconfig: Path | None = None  # None: in-cluster config (service account)
    kube_context: str | None = None
    leader_election: bool = True
    lease_namespace: str = "flowscope"
    lease_name: str = "flowscope-metadata-publisher"
    identity: str = ""  # "" -> host name and a random suffix
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    watch_timeout_s: int = 300  # the server ends each watch after this; it is re-opened
    publish_labels: bool = True
    # Pod annotation keys whose values the metadata carries; none by default (annotations can
    # hold anything, e.g. kubectl's last-applied-configuration with a Secret's data).
    publish_annotations: frozenset[str] = frozenset()
    # Other clusters' CIDRs (peered clusters): their peers are classified, never held back.
    other_cluster_cidrs: tuple[Network, ...] = ()
    # join: also join the raw DNS topic (enricher/dnsjoin.py) in the same process.
    dns: bool = True
    # join: output and input offsets committed together in Kafka transactions, so a restart
    # neither loses nor repeats a record for read_committed consumers. False: at-least-once
    # (offsets auto-committed after output; a restart re-emits what followed the last commit).
    exactly_once: bool = True
    # join: this instance's stable name (a StatefulSet pod name). The transactional.id and the
    # static group membership (group.instance.id) derive from it, so a restarted instance
    # fences its zombie and takes its partitions back at once instead of after the session
    # timeout. "": a random name per process (no fencing across restarts, no static
    # membership). Two live instances must never share one.
    instance: str = ""
    # join: a transaction is committed once it holds this many input records or is this old
    # (whichever first; at the end of a consumed batch). read_committed consumers see output
    # only when it commits: the interval is the latency it adds.
    commit_interval_s: float = 0.1
    commit_max_records: int = 50_000
    kafka_security: KafkaSecurity = PLAINTEXT
    # join: the pod and node labels each end of a record carries (globs); the metadata must
    # carry them too (publish_labels for pods; node labels always travel).
    record_pod_labels: tuple[str, ...] = DEFAULT_POD_LABELS
    record_node_labels: tuple[str, ...] = ()

    @property
    def pod_fields(self) -> PodFields:
        return PodFields(labels=self.publish_labels, annotations=self.publish_annotations)

    @property
    def label_selection(self) -> LabelSelection:
        return LabelSelection(self.record_pod_labels, self.record_node_labels)

    @property
    def topics(self) -> Topics:
        return Topics(prefix=self.topic_prefix)
