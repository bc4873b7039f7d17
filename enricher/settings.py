"""The enricher's settings: one frozen object, built once in ``__main__``. Each field that
is a setting declares its option, variable and help (flowscope.settings); ``publish`` and
``join`` take the settings named for them and the shared ones."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from enricher.join.classify import Network, parse_cidrs
from enricher.join.labels import DEFAULT_POD_LABELS, LabelSelection, parse_globs
from enricher.publish.kubeobjects import PodFields
from flowscope import settings
from flowscope.kafka_security import PLAINTEXT, KafkaSecurity
from flowscope.settings import (
    between,
    checked,
    non_negative,
    optional_path,
    optional_str,
    positive,
    setting,
)
from flowscope.topics import Topics

MAX_BATCH_RECORDS = 10_000
PUBLISH = ("publish",)
JOIN = ("join",)


def _cidrs(what: str) -> Callable[[str], tuple[Network, ...]]:
    return lambda text: parse_cidrs(text, what)


# A Kubernetes annotation key: an optional DNS-subdomain prefix and "/", then a name of at
# most 63 alphanumerics, "-", "_" and ".", starting and ending alphanumeric.
_ANNOTATION_KEY = re.compile(
    r"(?:[a-z0-9]([-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)


def annotation_keys(text: str) -> frozenset[str]:
    """Comma- or space-separated annotation keys (exact keys: no patterns)."""
    keys = text.replace(",", " ").split()
    for key in keys:
        prefix = key.rpartition("/")[0]
        if not _ANNOTATION_KEY.fullmatch(key) or len(prefix) > 253:
            raise argparse.ArgumentTypeError(
                f"{key!r} is not an annotation key (e.g. example.com/team or team)"
            )
    return frozenset(keys)


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


_batch_records = checked(
    _whole,
    between(1, MAX_BATCH_RECORDS, f"must be 1 (one record per message) to {MAX_BATCH_RECORDS}"),
)
_positive_float = checked(float, positive)
_positive_int = checked(int, positive)


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = settings.bootstrap_servers()
    topic_prefix: str = settings.topic_prefix()
    log_level: str = settings.log_level()
    consumer_group: str = setting(
        "flowscope-enricher",
        "consumer group for the raw topics",
        env="FLOWSCOPE_ENRICHER_GROUP",
        flag="--group",
        commands=JOIN,
    )
    metadata_file: Path | None = setting(
        None,
        "YAML of Kubernetes objects, as `kubectl get -o yaml` prints",
        env="FLOWSCOPE_METADATA_FILE",
        flag="--file",
        parse=optional_path,
        commands=PUBLISH,
    )
    prune: bool = setting(
        True,
        "tombstone keys in the topic that the file no longer has",
        env="FLOWSCOPE_PUBLISH_PRUNE",
        commands=PUBLISH,
    )
    stats_interval_s: float = setting(
        10.0,
        "seconds between counter log lines",
        env="FLOWSCOPE_ENRICHER_STATS_INTERVAL_SECONDS",
        parse=_positive_float,
    )
    # join, publish --watch: Prometheus /metrics; 0: no endpoint
    metrics_port: int = setting(
        0,
        "Prometheus /metrics port for join and publish --watch; 0: no endpoint",
        env="FLOWSCOPE_ENRICHER_METRICS_PORT",
        parse=checked(int, between(0, 65535, "must be 0 (off) or 1-65535")),
    )
    # Raw records per consume() call (about: messages are asked for as many as the last
    # batch's messages held records on average).
    batch_size: int = setting(
        2000,
        "raw records per consume(), about",
        env="FLOWSCOPE_ENRICHER_BATCH_SIZE",
        parse=_positive_int,
        commands=JOIN,
    )
    # Enriched records per produced message (a JSON array; 1: one record per message, no
    # array). Records are grouped per output partition within one consumed batch, so this
    # adds no waiting of its own (the processors and demo readers decode both forms).
    output_batch_records: int = setting(
        256,
        f"enriched records per produced message, a JSON array when above 1 (1 to "
        f"{MAX_BATCH_RECORDS})",
        env="FLOWSCOPE_ENRICHER_BATCH_RECORDS",
        flag="--batch-records",
        parse=_batch_records,
        commands=JOIN,
    )
    # consume() returns when the batch is full or this time is up: at low rates it is the
    # delay the enricher adds, at high rates batches fill first. Idle cost: 50 wakeups/s.
    poll_timeout_s: float = 0.02
    # How long a deleted pod still names its IP (records from collectors arrive late).
    deleted_pod_grace_s: float = setting(
        300.0,
        "how long a deleted pod still names its IP",
        env="FLOWSCOPE_ENRICHER_DELETED_POD_GRACE_SECONDS",
        parse=_positive_float,
        commands=JOIN,
    )
    metadata_load_timeout_s: float = 60.0
    # Records whose pod or peer address has no metadata yet wait this long for it (0: never).
    holdback_s: float = setting(
        5.0,
        "seconds a record whose pod or peer has no metadata yet waits for it before it "
        "is emitted as unresolved; 0 disables",
        env="FLOWSCOPE_ENRICHER_HOLDBACK_SECONDS",
        parse=checked(float, non_negative),
        commands=JOIN,
    )
    holdback_max_records: int = setting(
        200_000,
        "records held at most; more are emitted unresolved at once and counted",
        env="FLOWSCOPE_ENRICHER_HOLDBACK_MAX_RECORDS",
        parse=_positive_int,
        commands=JOIN,
    )
    # This cluster's pod and service CIDRs: only unknown addresses inside them are held back.
    # Empty: every unknown private address may be a pod, so all of them are.
    cluster_cidrs: tuple[Network, ...] = setting(
        (),
        "this cluster's pod and service CIDRs, comma-separated; only unknown addresses "
        "inside them are held back (none: every private address is)",
        env="FLOWSCOPE_CLUSTER_CIDRS",
        parse=_cidrs("--cluster-cidrs"),
        commands=JOIN,
    )
    # publish --watch: a live cluster through the API server instead of a file.
    watch: bool = setting(
        False,
        "watch a live cluster instead of reading a file",
        env="FLOWSCOPE_PUBLISH_WATCH",
        commands=PUBLISH,
    )
    kubeconfig: Path | None = setting(
        None,
        "kubeconfig file (the variable, then KUBECONFIG; none: the in-cluster service account)",
        env="FLOWSCOPE_KUBECONFIG",
        parse=optional_path,
        commands=PUBLISH,
    )
    kube_context: str | None = setting(
        None,
        "kubeconfig context (none: the current one)",
        env="FLOWSCOPE_KUBE_CONTEXT",
        flag="--context",
        parse=optional_str,
        commands=PUBLISH,
    )
    leader_election: bool = setting(
        True,
        "stand by unless holding the Lease",
        env="FLOWSCOPE_PUBLISH_LEADER_ELECTION",
        commands=PUBLISH,
    )
    lease_namespace: str = setting(
        "flowscope", "namespace of the Lease", env="FLOWSCOPE_LEASE_NAMESPACE", commands=PUBLISH
    )
    lease_name: str = setting(
        "flowscope-metadata-publisher",
        "name of the Lease",
        env="FLOWSCOPE_LEASE_NAME",
        commands=PUBLISH,
    )
    identity: str = setting(
        "",
        "this replica's name in the Lease",
        env="FLOWSCOPE_PUBLISHER_IDENTITY",
        shown="host name and a random suffix",
        commands=PUBLISH,
    )
    lease_duration_s: float = setting(
        15.0,
        "seconds a silent leader keeps the Lease",
        env="FLOWSCOPE_LEASE_DURATION_SECONDS",
        parse=_positive_float,
        commands=PUBLISH,
    )
    renew_deadline_s: float = setting(
        10.0,
        "seconds the leader tries to renew before standing down",
        env="FLOWSCOPE_LEASE_RENEW_DEADLINE_SECONDS",
        parse=_positive_float,
        commands=PUBLISH,
    )
    retry_period_s: float = setting(
        2.0,
        "seconds between Lease attempts",
        env="FLOWSCOPE_LEASE_RETRY_PERIOD_SECONDS",
        parse=_positive_float,
        commands=PUBLISH,
    )
    # The server ends each watch after this; it is re-opened.
    watch_timeout_s: int = setting(
        300,
        "server-side length of one watch request",
        env="FLOWSCOPE_WATCH_TIMEOUT_SECONDS",
        parse=_positive_int,
        commands=PUBLISH,
    )
    publish_labels: bool = setting(
        True,
        "carry pod labels in the metadata",
        env="FLOWSCOPE_PUBLISH_LABELS",
        commands=PUBLISH,
    )
    # Pod annotation keys whose values the metadata carries; none by default (annotations can
    # hold anything, e.g. kubectl's last-applied-configuration with a Secret's data).
    publish_annotations: frozenset[str] = setting(
        frozenset(),
        "pod annotation keys whose values the metadata carries, comma-separated; "
        "no others ever are",
        env="FLOWSCOPE_PUBLISH_ANNOTATIONS",
        parse=annotation_keys,
        metavar="KEYS",
        commands=PUBLISH,
    )
    # Other clusters' CIDRs (peered clusters): their peers are classified, never held back.
    other_cluster_cidrs: tuple[Network, ...] = setting(
        (),
        "CIDRs of other (peered) clusters, comma-separated; their peers are classified as "
        "another cluster",
        env="FLOWSCOPE_OTHER_CLUSTER_CIDRS",
        parse=_cidrs("--other-cluster-cidrs"),
        commands=JOIN,
    )
    # join: also join the raw DNS topic (enricher/join/dnsjoin.py) in the same process.
    dns: bool = setting(
        True,
        "also join DNS queries (<prefix>.raw.dns -> <prefix>.enriched.dns)",
        env="FLOWSCOPE_ENRICHER_DNS_ENABLED",
        flag="--dns-enabled",
        commands=JOIN,
    )
    # join: output and input offsets committed together in Kafka transactions, so a restart
    # neither loses nor repeats a record for read_committed consumers. False: at-least-once
    # (offsets auto-committed after output; a restart re-emits what followed the last commit).
    exactly_once: bool = setting(
        True,
        "commit output and input offsets in Kafka transactions; false: at-least-once",
        env="FLOWSCOPE_ENRICHER_EXACTLY_ONCE",
        commands=JOIN,
    )
    # join: this instance's stable name (a StatefulSet pod name). The transactional.id and the
    # static group membership (group.instance.id) derive from it, so a restarted instance
    # fences its zombie and takes its partitions back at once instead of after the session
    # timeout. "": a random name per process (no fencing across restarts, no static
    # membership). Two live instances must never share one.
    instance: str = setting(
        "",
        "this instance's stable name, e.g. its pod name: the transactional.id and the "
        "static group membership derive from it, so a restart fences its zombie and resumes "
        "at once; never shared by two live instances",
        env="FLOWSCOPE_ENRICHER_INSTANCE",
        commands=JOIN,
    )
    # join: a transaction is committed once it holds this many input records or is this old
    # (whichever first; at the end of a consumed batch). read_committed consumers see output
    # only when it commits: the interval is the latency it adds.
    commit_interval_s: float = setting(
        0.1,
        "seconds between transaction commits, the latency read_committed readers see",
        env="FLOWSCOPE_ENRICHER_COMMIT_INTERVAL_SECONDS",
        parse=_positive_float,
        commands=JOIN,
    )
    commit_max_records: int = setting(
        50_000,
        "input records per transaction at most",
        env="FLOWSCOPE_ENRICHER_COMMIT_MAX_RECORDS",
        parse=_positive_int,
        commands=JOIN,
    )
    kafka_security: KafkaSecurity = PLAINTEXT  # from the --kafka-* settings
    # join: the pod and node labels each end of a record carries (globs); the metadata must
    # carry them too (publish_labels for pods; node labels always travel).
    record_pod_labels: tuple[str, ...] = setting(
        DEFAULT_POD_LABELS,
        "pod labels each end of a record carries (k8s.pod.label.<key>), comma-separated globs",
        env="FLOWSCOPE_ENRICHER_POD_LABELS",
        parse=parse_globs,
        metavar="GLOBS",
        commands=JOIN,
    )
    record_node_labels: tuple[str, ...] = setting(
        (),
        "node labels each end carries (k8s.node.label.<key>; zone and region are fields "
        "already), comma-separated globs",
        env="FLOWSCOPE_ENRICHER_NODE_LABELS",
        parse=parse_globs,
        metavar="GLOBS",
        commands=JOIN,
    )

    @property
    def pod_fields(self) -> PodFields:
        return PodFields(labels=self.publish_labels, annotations=self.publish_annotations)

    @property
    def label_selection(self) -> LabelSelection:
        return LabelSelection(self.record_pod_labels, self.record_node_labels)

    @property
    def topics(self) -> Topics:
        return Topics(prefix=self.topic_prefix)


ENV = settings.env_names(Settings)
