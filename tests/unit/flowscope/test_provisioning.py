"""The topic plan: families, replication that follows the cluster, overrides checked."""

from __future__ import annotations

import pytest

from flowscope import provisioning
from flowscope.topics import Topics


def test_three_brokers_get_three_replicas_and_two_in_sync() -> None:
    planned = {t.name: t for t in provisioning.plan(Topics("p"), brokers=5)}
    # Every topic name Topics knows has a family: a new topic cannot be left unplanned.
    names = {getattr(Topics("p"), n) for n, v in vars(Topics).items() if isinstance(v, property)}
    assert set(planned) == names
    raw = planned["p.raw.tcp"]
    assert (raw.partitions, raw.replication) == (12, 3)
    assert raw.config == {
        "cleanup.policy": "delete",
        "min.insync.replicas": "2",
        "retention.ms": str(86_400_000),
    }
    meta = planned["p.k8s.metadata"]
    assert meta.config["cleanup.policy"] == "compact" and "retention.ms" not in meta.config


def test_a_single_broker_gets_one_replica_and_one_in_sync() -> None:
    planned = provisioning.plan(Topics("p"), brokers=1)
    assert {(t.replication, t.config["min.insync.replicas"]) for t in planned} == {(1, "1")}


def test_overrides_and_their_errors() -> None:
    policies = provisioning.with_overrides({"raw": 24}, replication=2, retention_ms={"raw": 5})
    raw = next(t for t in provisioning.plan(Topics("p"), 3, policies) if t.family == "raw")
    assert (raw.partitions, raw.replication, raw.config["retention.ms"]) == (24, 2, "5")
    assert raw.config["min.insync.replicas"] == "1"
    with pytest.raises(ValueError, match="unknown topic family 'rwa'"):
        provisioning.with_overrides({"rwa": 3})
    with pytest.raises(ValueError, match="needs 3 brokers; the cluster has 2"):
        provisioning.plan(Topics("p"), 2, provisioning.with_overrides(replication=3))
