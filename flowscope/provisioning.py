"""Every flowscope topic with the settings a real cluster needs, per topic family.

Raw and enriched topics are partitioned for scale-out (collectors write every node's records
keyed by pod; enrichers and processors share partitions in their groups); the metadata topic
is compacted; metrics and alerts are small. Replication follows the cluster: three replicas
and ``min.insync.replicas`` 2 where there are three brokers or more, so ``acks=all`` writes
survive one broker away; fewer brokers get what they can hold.

An existing topic is never altered here: where its partitions, replicas or settings differ
from the plan, :func:`check` reports it (``python -m flowscope topics check`` exits 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from confluent_kafka.admin._config import ConfigResource  # not re-exported (mypy --strict)
from confluent_kafka.cimpl import NewTopic

from flowscope.kafka import admin_client, create_topics
from flowscope.topics import Topics

_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS


@dataclass(frozen=True)
class TopicPolicy:
    partitions: int
    retention_ms: int | None = None  # None: the cluster's default (and compacted: forever)
    compacted: bool = False
    replication: int | None = None  # None: min(3, brokers)
    min_insync: int | None = None  # None: replication - 1 (at least 1)

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise ValueError(f"partitions must be 1 or more, not {self.partitions}")
        if self.replication is not None and self.replication < 1:
            raise ValueError(f"replication factor must be 1 or more, not {self.replication}")


DEFAULT_POLICIES: Mapping[str, TopicPolicy] = {
    "raw": TopicPolicy(partitions=12, retention_ms=1 * _DAY_MS),
    "enriched": TopicPolicy(partitions=12, retention_ms=3 * _DAY_MS),
    "metadata": TopicPolicy(partitions=1, compacted=True),
    "metrics": TopicPolicy(partitions=6, retention_ms=7 * _DAY_MS),
    "alerts": TopicPolicy(partitions=1, retention_ms=30 * _DAY_MS),
    "deadletter": TopicPolicy(partitions=1, retention_ms=7 * _DAY_MS),
    "health": TopicPolicy(partitions=1, retention_ms=1 * _DAY_MS),
}
FAMILIES = tuple(DEFAULT_POLICIES)


def family_topics(topics: Topics) -> dict[str, tuple[str, ...]]:
    return {
        "raw": (topics.raw_tcp, topics.raw_udp, topics.raw_dns, topics.raw_drops),
        "enriched": (topics.enriched_tcp, topics.enriched_udp, topics.enriched_dns),
        "metadata": (topics.metadata,),
        "metrics": (
            topics.metrics_dns,
            topics.metrics_tcp_pairs,
            topics.metrics_tcp_latency,
            topics.metrics_cost_pairs,
            topics.metrics_cost_rollups,
            topics.metrics_path_health,
        ),
        "alerts": (topics.alerts,),
        "deadletter": (topics.deadletter,),
        "health": (topics.collector_health,),
    }


@dataclass(frozen=True)
class PlannedTopic:
    name: str
    family: str
    partitions: int
    replication: int
    config: Mapping[str, str]


def plan(
    topics: Topics, brokers: int, policies: Mapping[str, TopicPolicy] = DEFAULT_POLICIES
) -> list[PlannedTopic]:
    """Every topic with its partitions, replicas and settings, for a cluster of ``brokers``."""
    unknown = set(policies) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown topic families {sorted(unknown)}; valid: {', '.join(FAMILIES)}")
    planned = []
    for family, names in family_topics(topics).items():
        policy = policies.get(family, DEFAULT_POLICIES[family])
        replication = policy.replication or min(3, brokers)
        if replication > brokers:
            raise ValueError(
                f"{family}: replication factor {replication} needs {replication} brokers; "
                f"the cluster has {brokers}"
            )
        min_insync = policy.min_insync or max(1, replication - 1)
        config = {
            "cleanup.policy": "compact" if policy.compacted else "delete",
            "min.insync.replicas": str(min_insync),
        }
        if policy.retention_ms is not None:
            config["retention.ms"] = str(policy.retention_ms)
        planned += [PlannedTopic(n, family, policy.partitions, replication, config) for n in names]
    return planned


def with_overrides(
    partitions: Mapping[str, int] | None = None,
    replication: int | None = None,
    retention_ms: Mapping[str, int] | None = None,
) -> dict[str, TopicPolicy]:
    """The default policies with per-family partitions/retention and one replication factor."""
    policies = dict(DEFAULT_POLICIES)
    for family in {*(partitions or {}), *(retention_ms or {})}:
        if family not in policies:
            raise ValueError(f"unknown topic family {family!r}; valid: {', '.join(FAMILIES)}")
    for family, policy in policies.items():
        changes: dict[str, Any] = {}
        if partitions and family in partitions:
            changes["partitions"] = partitions[family]
        if retention_ms and family in retention_ms:
            changes["retention_ms"] = retention_ms[family]
        if replication is not None:
            changes["replication"] = replication
        policies[family] = replace(policy, **changes)
    return policies


def broker_count(bootstrap: str, timeout_s: float = 30.0) -> int:
    return len(admin_client(bootstrap).list_topics(timeout=timeout_s).brokers)


def check(bootstrap: str, planned: list[PlannedTopic], timeout_s: float = 30.0) -> list[str]:
    """One line per difference between the cluster and the plan (missing topics included)."""
    admin = admin_client(bootstrap)
    existing = admin.list_topics(timeout=timeout_s).topics
    problems: list[str] = []
    present = []
    for topic in planned:
        meta = existing.get(topic.name)
        if meta is None or meta.error is not None:
            problems.append(f"{topic.name}: missing")
            continue
        present.append(topic)
        partitions = len(meta.partitions)
        if partitions != topic.partitions:
            problems.append(f"{topic.name}: {partitions} partitions, planned {topic.partitions}")
        replicas = min(len(p.replicas) for p in meta.partitions.values())
        if replicas != topic.replication:
            problems.append(
                f"{topic.name}: replication factor {replicas}, planned {topic.replication}"
            )
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t.name) for t in present]
    futures = admin.describe_configs(resources) if resources else {}
    for topic, resource in zip(present, resources, strict=True):
        actual = futures[resource].result(timeout=timeout_s)
        for key, want in topic.config.items():
            have = actual[key].value if key in actual else None
            if have != want:
                problems.append(f"{topic.name}: {key}={have}, planned {want}")
    return problems


def create(
    bootstrap: str, planned: list[PlannedTopic], timeout_s: float = 30.0
) -> tuple[list[str], list[str]]:
    """Create the missing topics. Returns (created, problems with the existing ones)."""
    admin = admin_client(bootstrap)
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    new = [
        NewTopic(t.name, t.partitions, t.replication, config=dict(t.config))
        for t in planned
        if t.name not in existing
    ]
    created = create_topics(admin, new, timeout_s)
    # The topics that were there already are checked, not changed.
    return created, check(bootstrap, [t for t in planned if t.name not in created], timeout_s)
