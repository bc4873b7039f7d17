"""Records that cross Kafka topics. The JSON schemas under schemas/ are generated from these.

Units are in field names (``_ns``, ``_us``, ``bytes_``). Times are Unix epoch nanoseconds
(event time: when the kernel saw it), which is what OTLP uses too.

One module per family (``transport``, ``dns``, ``metrics``, ``operations``, and the
``endpoint`` and ``vocabulary`` they share); import them from here.
"""

from __future__ import annotations

from flowscope.records.dns import (
    DnsMetric,
    DnsOutcome,
    DnsServerClass,
    EnrichedDnsQuery,
    RawDnsQuery,
)
from flowscope.records.endpoint import Endpoint
from flowscope.records.health import PathHealthMetric, RawPacketDrops
from flowscope.records.metrics import (
    AlertEvent,
    CostPairMetric,
    CostRollupMetric,
    TcpLatencyMetric,
    TcpPairMetric,
)
from flowscope.records.operations import CollectorHealth, DeadLetter
from flowscope.records.transport import (
    EnrichedTcpConnection,
    EnrichedUdpFlow,
    RawTcpConnection,
    RawUdpFlow,
    udp_local_is_client,
)
from flowscope.records.vocabulary import (
    FAILURE_OUTCOMES,
    OUTCOME_RULES,
    Attribution,
    Outcome,
    PeerClass,
    Role,
)

__all__ = [
    "FAILURE_OUTCOMES",
    "OUTCOME_RULES",
    "AlertEvent",
    "Attribution",
    "CollectorHealth",
    "CostPairMetric",
    "CostRollupMetric",
    "DeadLetter",
    "DnsMetric",
    "DnsOutcome",
    "DnsServerClass",
    "Endpoint",
    "EnrichedDnsQuery",
    "EnrichedTcpConnection",
    "EnrichedUdpFlow",
    "Outcome",
    "PathHealthMetric",
    "PeerClass",
    "RawDnsQuery",
    "RawPacketDrops",
    "RawTcpConnection",
    "RawUdpFlow",
    "Role",
    "TcpLatencyMetric",
    "TcpPairMetric",
    "udp_local_is_client",
]
