"""The enricher's metrics: how the keys of :meth:`enricher.join.joiner.Joiner.metrics`, the DNS
joiner's counters and :meth:`enricher.publish.live.WatchPublisher.metrics` (the keys its
log lines print) are exposed on ``/metrics``."""

from __future__ import annotations

from collections.abc import Sequence

from enricher import EnricherError
from flowscope.metrics import Metric, MetricsPortError, MetricsServer, Rule, Snapshot, Vocabulary
from flowscope.probes import Probe


def _c(what: str, help: str, *labels: str) -> Metric:
    return Metric(f"flowscope_enricher_{what}_total", help, "counter", labels)


def _g(what: str, help: str, *labels: str) -> Metric:
    return Metric(f"flowscope_enricher_{what}", help, "gauge", labels)


_IN = _c("records_in", "raw records consumed", "signal")
_ENRICHED = _c("records_enriched", "enriched records emitted", "signal")
_ENDPOINTS = _c("endpoints", "endpoints without a pod, by class", "signal", "side", "outcome")
_DEAD = _c("deadletter_records", "records sent to the dead-letter topic", "signal")
_DEAD_REASONS = _c("deadletter_reasons", "dead letters by reason", "signal", "reason")
_CONSUME = _c("consume_errors", "consumer errors reported by Kafka", "signal")
_HELD = _c("holdback_records", "records held for metadata, by how they left", "outcome")
_META = _c("metadata_records", "metadata topic records applied, by kind", "kind")
_OBJECTS = _g("metadata_objects", "objects in the metadata index", "kind")
_MESSAGES = _c("kafka_messages", "produced Kafka messages by outcome", "outcome")
_RECORDS = _c("kafka_records", "records in produced messages by outcome", "outcome")
_TXN = _c("transactions", "Kafka transactions by outcome", "outcome")
_PUB_OBJECTS = _c("publisher_objects", "cluster objects the publisher handled", "outcome")
_PUB_WATCH = _c("publisher_watch_events", "API server list/watch counters", "kind", "counter")
_PUB_LEASE = _c("publisher_lease_events", "leader-election Lease outcomes", "outcome")
_PUB_MESSAGES = _c("publisher_kafka_messages", "metadata messages by outcome", "outcome")

_NAMED = _c("server_name_lookups", "internet servers named from DNS answers, by how", "outcome")
_ANSWERS = _c("dns_answers", "DNS answers seen for naming servers", "outcome")
_EVICTED = _c("dns_names_evicted_addresses", "addresses dropped for the per-node bound")

_UNVOUCHED = _c(
    "unvouched_records",
    "records newer than the metadata's watermark, joined without naming addresses",
    "signal",
)
_UDP = {"signal": "udp"}
_DNS = {"signal": "dns"}
_TCP = {"signal": "tcp"}

RULES: tuple[Rule, ...] = (
    # The DNS joiner (enricher_dns_*) before the TCP joiner's enricher_*.
    Rule("enricher_dns_records_in_total", _IN, _DNS),
    Rule("enricher_dns_enriched_total", _ENRICHED, _DNS),
    Rule("enricher_dns_(?P<side>client|server)_(?P<outcome>unresolved)_total", _ENDPOINTS, _DNS),
    Rule("enricher_dns_deadlettered_total", _DEAD, _DNS),
    Rule("enricher_dns_(?P<reason>metadata)_deadlettered_total", _DEAD_REASONS, _DNS),
    Rule("enricher_dns_consume_errors_total", _CONSUME, _DNS),
    Rule("enricher_dns_unvouched_total", _UNVOUCHED, _DNS),
    Rule("enricher_dns_udp_unvouched_total", _UNVOUCHED, _UDP),
    # UDP flows are joined by the DNS joiner's thread; their counters sit with its own.
    Rule("enricher_dns_udp_records_in_total", _IN, _UDP),
    Rule("enricher_dns_udp_enriched_total", _ENRICHED, _UDP),
    Rule(
        "enricher_dns_udp_(?P<side>client|server)_(?P<outcome>unresolved)_total", _ENDPOINTS, _UDP
    ),
    Rule(
        "enricher_dns_names_(?P<outcome>named_by_pod|named_by_node|expired|no_name)_total", _NAMED
    ),
    Rule("enricher_dns_names_answers_(?P<outcome>indexed|unusable)_total", _ANSWERS),
    Rule("enricher_dns_names_evicted_addresses_total", _EVICTED),
    Rule(
        "enricher_dns_names_cnames_clipped_total",
        _c("dns_names_cnames_clipped", "answers whose CNAME chain was cut to the bound"),
    ),
    Rule("enricher_dns_names_addresses", _g("dns_names_addresses", "addresses with a DNS name")),
    Rule("enricher_records_in_total", _IN, _TCP),
    Rule("enricher_records_enriched_total", _ENRICHED, _TCP),
    Rule(
        "enricher_(?P<side>remote|local)_(?P<outcome>unresolved|external|other_cluster)_total",
        _ENDPOINTS,
        _TCP,
    ),
    Rule("enricher_deadletter_total", _DEAD, _TCP),
    Rule("enricher_deadletter_(?P<reason>.+)_total", _DEAD_REASONS, _TCP),
    Rule("enricher_consume_errors_total", _CONSUME, _TCP),
    Rule("enricher_held_total", _HELD, {"outcome": "held"}),
    Rule("enricher_held_(?P<outcome>.+)_total", _HELD),
    Rule(
        "enricher_metadata_watermark_lag_seconds",
        _g(
            "metadata_watermark_lag_seconds",
            "how far the metadata's heartbeat is behind now (-1: no live publisher seen)",
        ),
    ),
    Rule("enricher_held_now", _g("holdback_held_records", "records waiting for metadata now")),
    Rule(
        "enricher_replay_(?P<outcome>skipped|repeated)_total",
        _c("replay_records", "records re-read after a restart behind a held one", "outcome"),
    ),
    Rule("enricher_metadata_(?P<kind>upserts|tombstones|invalid)_total", _META),
    Rule(
        "enricher_metadata_pods_purged_total",
        _c("metadata_pods_purged", "deleted pods forgotten after their grace"),
    ),
    Rule(
        "enricher_metadata_read_errors_total",
        _c("metadata_read_errors", "errors reading the metadata topic"),
    ),
    Rule("enricher_metadata_(?P<kind>pods|nodes|services)", _OBJECTS),
    Rule(
        "enricher_produce_(?P<outcome>queued|delivered|delivery_failed|dropped_buffer_full)_total",
        _MESSAGES,
    ),
    Rule("enricher_produce_messages_total", _c("output_messages", "enriched messages built")),
    Rule("enricher_produce_records_total", _c("output_records", "records in those messages")),
    Rule("enricher_produce_records_(?P<outcome>.+)_total", _RECORDS),
    Rule("enricher_transactions_(?P<outcome>committed|aborted)_total", _TXN),
    Rule(
        "enricher_transactions_records_aborted_total",
        _c("transactions_aborted_records", "input records in aborted transactions"),
    ),
    Rule(
        "enricher_shutdown_uncommitted_records_total",
        _c(
            "shutdown_uncommitted_records",
            "output the last commit at shutdown did not commit (read again by the next owner)",
        ),
    ),
    Rule(
        "enricher_join_restarts_total",
        _c("join_restarts", "joins started again in-process after a producer failed"),
    ),
    Rule(
        "publisher_heartbeats_(?P<outcome>written|skipped)_total",
        _c(
            "publisher_heartbeats",
            "metadata watermark heartbeats (skipped: a watch was down)",
            "outcome",
        ),
    ),
    Rule("publisher_terms_total", _c("publisher_terms", "terms this replica led")),
    Rule(
        "publisher_(?P<outcome>records_written|tombstones|unchanged|invalid_objects)_total",
        _PUB_OBJECTS,
    ),
    Rule("publisher_lease_(?P<outcome>.+)_total", _PUB_LEASE),
    Rule("publisher_produce_(?P<outcome>.+)_total", _PUB_MESSAGES),
    Rule("publisher_(?P<kind>[a-z]+)_(?P<counter>.+)_total", _PUB_WATCH),
)

VOCABULARY = Vocabulary("enricher", RULES)


def serve(port: int, *snapshots: Snapshot, probes: Sequence[Probe] = ()) -> MetricsServer | None:
    """``/metrics`` on ``port`` (0: none) with the union of ``snapshots``; ``/livez`` and
    ``/readyz`` from ``probes``."""
    if not port:
        return None

    def snapshot() -> dict[str, int]:
        out: dict[str, int] = {}
        for read in snapshots:
            out.update(read())
        return out

    try:
        return MetricsServer(VOCABULARY.registry(snapshot), port, probes=probes)
    except MetricsPortError as exc:
        raise EnricherError(str(exc)) from exc
