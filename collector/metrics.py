"""The collector's metrics: how the keys of :meth:`collector.app.Collector.counters` (those
the health record carries) are exposed on ``/metrics``."""

from __future__ import annotations

from flowscope.metrics import Metric, Rule, Vocabulary


def _c(what: str, help: str, *labels: str) -> Metric:
    return Metric(f"flowscope_collector_{what}_total", help, "counter", labels)


def _g(what: str, help: str, *labels: str) -> Metric:
    return Metric(f"flowscope_collector_{what}", help, "gauge", labels)


# Kernel-side counters: the BPF programs' counters maps, one label per program.
_PROGRAMS = (
    ("kernel_udp_", "udpflow"),
    ("kernel_drops_", "drops"),
    ("dns_kernel_", "dnssnoop"),
    ("kernel_", "tcpconn"),
)
_LOST = _c("ringbuf_lost_records", "records the BPF program could not reserve", "program")
_RECURSION = _c("bpf_recursion_misses", "program runs the kernel skipped (recursion)", "program")
_RESUMED = _g("restart_resumed", "1 when this run resumed the pinned programs of the last one")
_KERNEL = _c("kernel_events", "the BPF program's own counters, by name", "program", "counter")
_MESSAGES = _c("kafka_messages", "Kafka messages (of many records each) by outcome", "outcome")
_RECORDS = _c("kafka_records", "records in Kafka messages, by delivery outcome", "outcome")
_NAT = _c("nat_lookups", "Service NAT lookups by outcome ('all': every lookup)", "outcome")
_DNS_PARSE = _c("dns_parse_errors", "DNS messages that did not parse, by reason", "reason")
_DNS_SEARCH = _c("dns_search_outcomes", "search-list expansion handling, by outcome", "outcome")
_DNS = _c("dns_events", "the DNS pipeline's counters, by counter name", "counter")
_UDP = _c("udp_events", "the UDP reporter's counters, by counter name", "counter")
_DROPS = _c("drops_events", "the kernel drop reporter's counters, by counter name", "counter")
_RESTART = _c("restart_records", "what a restart found (backlog, discarded, open)", "counter")
_DROPPED = _c("records_dropped", "TCP records refused by a full producer buffer")

RULES: tuple[Rule, ...] = (
    *(Rule(f"{prefix}lost_ringbuf", _LOST, {"program": p}) for prefix, p in _PROGRAMS),
    *(Rule(f"{prefix}recursion_misses", _RECURSION, {"program": p}) for prefix, p in _PROGRAMS),
    Rule("kernel_restart_resumed", _RESUMED),
    Rule("kernel_(?P<counter>restart_.+)", _RESTART),
    *(Rule(f"{prefix}(?P<counter>.+)", _KERNEL, {"program": p}) for prefix, p in _PROGRAMS),
    Rule("events", _c("events_decoded", "ring-buffer events decoded")),
    Rule("decode_errors", _c("decode_errors", "ring-buffer events that did not decode")),
    Rule("discarded", _c("events_discarded", "decoded events not turned into a record")),
    Rule("failed_connects", _c("failed_connects", "connections that never established")),
    Rule("interim_records", _c("interim_records", "records of connections still open")),
    Rule("records_produced", _c("records_produced", "TCP records handed to the producer")),
    Rule("records_dropped_buffer_full", _DROPPED),
    Rule("cgroup_misses", _c("cgroup_misses", "cgroup ids not found under the cgroup root")),
    Rule("cgroup_walks", _c("cgroup_walks", "walks of the cgroup tree")),
    Rule("nat_lookups", _NAT, {"outcome": "all"}),
    Rule("nat_(?P<outcome>.+)", _NAT),
    Rule("(?P<outcome>produced|delivered|delivery_failed|dropped_buffer_full)", _MESSAGES),
    Rule("records_(?P<outcome>delivered|delivery_failed)", _RECORDS),
    Rule("in_flight", _g("kafka_in_flight_messages", "messages produced, not yet acknowledged")),
    Rule("dns_pending", _g("dns_pending_queries", "DNS queries waiting for their response")),
    Rule("dns_parse_(?P<reason>.+)", _DNS_PARSE),
    Rule("dns_search_(?P<outcome>.+)", _DNS_SEARCH),
    Rule("dns_(?P<counter>.+)", _DNS),
    Rule("udp_(?P<counter>.+)", _UDP),
    Rule("drops_(?P<counter>.+)", _DROPS),
)

VOCABULARY = Vocabulary("collector", RULES)
