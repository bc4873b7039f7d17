"""What the processors publish per closed window, and their alerts."""

from __future__ import annotations

from typing import Literal

import msgspec

from flowscope.records.vocabulary import Transport


class TcpPairMetric(msgspec.Struct, frozen=True, kw_only=True):
    """Connections between two workloads in one closed tumbling window (event time)."""

    schema_version: int = 1
    window_start_ns: int
    window_end_ns: int
    client_workload: str
    server_workload: str
    client_namespace: str | None
    server_namespace: str | None
    client_zones: list[str]
    server_zones: list[str]
    peer_classes: list[str]
    connections: int
    bytes_client_to_server: int
    bytes_server_to_client: int
    connect_latency_p50_us: float | None
    connect_latency_p99_us: float | None
    # The mergeable sketch the percentiles came from, so consumers can merge windows/pairs.
    connect_latency_sketch: dict[str, object] | None
    # One record per source partition; the id is deterministic (window,
    # partition, pair) so that a republished window can be recognised (processors/core/dedupe.py).
    metric_id: str | None = None
    source_partition: int | None = None


class TcpLatencyMetric(msgspec.Struct, frozen=True, kw_only=True):
    """Connection health between a client workload and a server workload (and the service it
    called) in one closed tumbling window (event time) of one source partition.

    ``metric_id`` is deterministic: a window republished after a worker restart carries the
    same id, and consumers keep the first record per id (processors/core/dedupe.py). Sum
    counts and merge sketches over ``source_partition`` for the pair's total.
    """

    schema_version: int = 1
    metric_id: str
    window_start_ns: int
    window_end_ns: int
    source_partition: int
    client_workload: str
    server_workload: str
    service: str | None  # k8s.service.name of the server end, when the enricher knew it
    client_namespace: str | None
    server_namespace: str | None
    connections: int  # finished connections (final records)
    # outcomes in FAILURE_OUTCOMES: refused, timed_out, connect_timeout, reset_by_peer,
    # unreachable, error (not cancelled, reset_locally, aborted)
    failed_connections: int
    outcomes: dict[str, int]  # every final outcome, failures included ("closed": clean)
    failure_rate: float | None  # failed_connections / connections
    connect_latency_p50_us: float | None
    connect_latency_p90_us: float | None
    connect_latency_p99_us: float | None
    rtt_p50_us: float | None  # smoothed RTT at close, per connection
    rtt_p90_us: float | None
    rtt_p99_us: float | None
    retrans_segs: int
    segs_out: int  # 0 when the producer did not report segments
    retransmission_rate: float | None  # retrans_segs / segs_out
    # The mergeable sketches (processors/core/sketch.py) the percentiles came from.
    connect_latency_sketch: dict[str, object] | None
    rtt_sketch: dict[str, object] | None
    # A server outside the cluster named by the client's DNS answers (server.address): the
    # metric is then per domain, its server_workload ``external/<domain>`` for all of the
    # domain's addresses (``external/<address>`` when no answer named it).
    server_domain: str | None = None


class CostPairMetric(msgspec.Struct, frozen=True, kw_only=True):
    """Bytes and data-transfer dollars between two workloads and two zones in one closed
    window of one source partition. Source = the client end, destination = the server end.

    Units: bytes are TCP payload bytes, or for ``transport`` ``udp`` IP bytes of whole
    datagrams; dollars are USD at the price table's per-GB prices (GB = 10**9 bytes unless
    the table says GiB), rounded to 1e-9 USD. ``cost_usd`` = ``cost_usd_source`` (charged to
    the source's account: what it sent and received) + ``cost_usd_destination``. Each
    connection (UDP: each flow window) is counted once (client side when observed); for UDP
    the server is the end on a fixed port (flowscope.records.udp_local_is_client).
    """

    schema_version: int = 1
    metric_id: str
    window_start_ns: int
    window_end_ns: int
    source_partition: int
    source_workload: str
    destination_workload: str
    source_namespace: str | None
    destination_namespace: str | None
    source_zone: str | None
    destination_zone: str | None
    cost_class: str  # same_zone, cross_zone, cross_region, internet, private, unknown
    priced: bool  # False: the price table has no price for this class (cost 0)
    cloud: str  # the price table used
    connections: int
    bytes_source_to_destination: int
    bytes_destination_to_source: int
    cost_usd: float
    cost_usd_source: float
    cost_usd_destination: float
    # A pair has one record per transport in a window: add them for its whole cost.
    transport: Transport = "tcp"


class CostRollupMetric(msgspec.Struct, frozen=True, kw_only=True):
    """Data-transfer bytes and dollars charged to one workload or one namespace in one closed
    window of one source partition (the sum over its CostPairMetric shares), or the cluster's
    traffic with one external destination domain (scope ``domain``: what the clients inside
    pay; ``name`` is the domain as the price table's ``domain_groups`` group it, or
    ``unnamed`` when no DNS answer named the server's address), or the ends with one value
    of a pod label (scope ``label``) or node label (``node_label``) the price table rolls up
    (or of a region, scope ``region``, for the ends on its nodes):
    ``name`` is ``<key>=<value>``, ``<key>=(none)`` for ends without that label."""

    schema_version: int = 1
    metric_id: str
    window_start_ns: int
    window_end_ns: int
    source_partition: int
    scope: Literal["workload", "namespace", "region", "domain", "label", "node_label"]
    name: str  # a workload key (namespace/kind/name), namespace, region, domain or key=value
    bytes_sent: int
    bytes_received: int
    cost_usd: float
    cost_usd_by_class: dict[str, float]
    bytes_by_class: dict[str, int]  # sent + received
    transport: Transport = "tcp"  # one record per transport: add them for the whole


class AlertEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An alert rule started or stopped holding for one group (firing / resolved).

    ``alert_id`` names one episode (rule, group, first breaching window): the firing and the
    resolved event of an episode share it, and a re-evaluation after a restart reproduces it.
    """

    schema_version: int = 1
    alert_id: str
    status: Literal["firing", "resolved"]
    rule: str
    severity: str
    metric: str
    group: dict[str, str | None]
    affected_workloads: list[str]
    threshold: float
    # The window values that crossed (firing) or the first window that did not (resolved,
    # with a "reason": not above the threshold, too few to judge, no traffic...).
    evidence: list[dict[str, object]]
    window_start_ns: int  # the window that caused this event
    window_end_ns: int
    time_ns: int  # when it was decided (wall clock)
