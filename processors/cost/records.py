"""Cross-zone cost records from a closed window's cells (pure, exact to the cent).

Source = client end, destination = server end. Bytes client->server are sent by the source
and received by the destination, and the other way round. Each end inside the cluster pays
the table's ``sent`` price for what it sends and ``received`` price for what it receives on
the path's class; an end outside the cluster (the internet) is not ours and pays nothing here.
So a workload's roll-up is exactly its share, and the shares of all workloads add up to the
total cost of the window.

Traffic with a server outside the cluster is also rolled up per destination domain (scope
``domain``): the client's share, under the server's DNS name grouped by the price table's
``domain_groups`` (``unnamed`` for an internet server no DNS answer named).

Each end inside the cluster is also charged by the pod labels and node labels the table's
``rollup_labels`` and ``rollup_node_labels`` name (scopes ``label`` and ``node_label``,
``<key>=<value>``, or ``<key>=(none)`` for an end without it: no label value has parentheses),
so that cost per team (or per rack) adds up to the window's total like the workload shares;
and by its node's region (scope ``region``) where the node has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from flowscope.records import CostPairMetric, CostRollupMetric
from flowscope.records.vocabulary import Transport
from processors.cost.prices import PriceTable, publishable
from processors.tcp.connections import ClosedWindow

ZERO = Decimal(0)
NO_LABEL = "(none)"  # an end without a rolled-up label (never a label value: no parentheses)
UNNAMED_DOMAIN = "unnamed"  # the domain roll-up of servers no DNS answer named


@dataclass
class _PairCost:
    source_namespace: str | None
    destination_namespace: str | None
    priced: bool
    connections: int = 0
    bytes_s2d: int = 0
    bytes_d2s: int = 0
    usd_source: Decimal = ZERO
    usd_destination: Decimal = ZERO


@dataclass
class _Rollup:
    bytes_sent: int = 0
    bytes_received: int = 0
    usd: Decimal = ZERO
    usd_by_class: dict[str, Decimal] = field(default_factory=dict)
    bytes_by_class: dict[str, int] = field(default_factory=dict)

    def charge(self, cost_class: str, sent: int, received: int, usd: Decimal) -> None:
        self.bytes_sent += sent
        self.bytes_received += received
        self.usd += usd
        self.usd_by_class[cost_class] = self.usd_by_class.get(cost_class, ZERO) + usd
        self.bytes_by_class[cost_class] = self.bytes_by_class.get(cost_class, 0) + sent + received


PairCostKey = tuple[str, str, str | None, str | None, str]


def cost_pair_id(start_ns: int, partition: int, key: PairCostKey, transport: str = "tcp") -> str:
    src, dst, szone, dzone, cost_class = key
    # TCP's ids stay as they were; UDP's are apart (a pair has a record per transport).
    kind = "cost.pair" if transport == "tcp" else f"cost.pair.{transport}"
    return f"{kind}|{start_ns}|{partition}|{src}|{dst}|{szone or ''}|{dzone or ''}|{cost_class}"


def rollup_id(start_ns: int, partition: int, scope: str, name: str, transport: str = "tcp") -> str:
    kind = "cost.rollup" if transport == "tcp" else f"cost.rollup.{transport}"
    return f"{kind}|{start_ns}|{partition}|{scope}|{name}"


def _label_scopes(
    scope: str, keys: tuple[str, ...], labels: tuple[tuple[str, str], ...]
) -> list[tuple[str, str]]:
    if not keys:
        return []
    found = dict(labels)
    return [(scope, f"{k}={found.get(k, NO_LABEL)}") for k in keys]


def cost_metrics(
    window: ClosedWindow, table: PriceTable, transport: Transport = "tcp"
) -> tuple[list[CostPairMetric], list[CostRollupMetric]]:
    pairs: dict[PairCostKey, _PairCost] = {}
    rollups: dict[tuple[str, str], _Rollup] = {}
    for key, cell in window.cells.items():
        price = table.price(key.peer_class)
        pkey: PairCostKey = (
            key.client_workload,
            key.server_workload,
            key.client_zone,
            key.server_zone,
            key.peer_class,
        )
        pc = pairs.get(pkey)
        if pc is None:
            pc = pairs[pkey] = _PairCost(
                cell.client_namespace, cell.server_namespace, priced=price is not None
            )
        c2s, s2c = cell.bytes_client_to_server, cell.bytes_server_to_client
        pc.connections += cell.connections
        pc.bytes_s2d += c2s
        pc.bytes_d2s += s2c
        usd_src = usd_dst = ZERO
        if price is not None:
            # Sum bytes x price first and divide once: exact in Decimal either way.
            if key.client_in_cluster:
                usd_src = table.usd(1, c2s * price.sent + s2c * price.received)
            if key.server_in_cluster:
                usd_dst = table.usd(1, s2c * price.sent + c2s * price.received)
        pc.usd_source += usd_src
        pc.usd_destination += usd_dst
        ends = (
            (
                key.client_in_cluster,
                key.client_workload,
                cell.client_namespace,
                c2s,
                s2c,
                usd_src,
                key.client_labels,
                key.client_node_labels,
                key.client_region,
            ),
            (
                key.server_in_cluster,
                key.server_workload,
                cell.server_namespace,
                s2c,
                c2s,
                usd_dst,
                key.server_labels,
                key.server_node_labels,
                key.server_region,
            ),
        )
        for inside, workload, namespace, sent, received, usd, labels, node_labels, region in ends:
            if not inside:
                continue
            scopes = [("workload", workload)]
            if namespace is not None:
                scopes.append(("namespace", namespace))
            if region is not None:
                scopes.append(("region", region))
            scopes += _label_scopes("label", table.rollup_labels, labels)
            scopes += _label_scopes("node_label", table.rollup_node_labels, node_labels)
            for scope in scopes:
                rollups.setdefault(scope, _Rollup()).charge(key.peer_class, sent, received, usd)
        domain = key.server_domain
        # Internet servers, and any other server a DNS answer named (not, say, a host
        # process talking to a private address nobody named).
        if (
            key.client_in_cluster
            and not key.server_in_cluster
            and (domain is not None or key.peer_class == "internet")
        ):
            name = table.domain_group(domain) if domain is not None else UNNAMED_DOMAIN
            rollups.setdefault(("domain", name), _Rollup()).charge(
                key.peer_class, c2s, s2c, usd_src
            )

    start, part = window.start_ns, window.partition
    pair_records = [
        CostPairMetric(
            metric_id=cost_pair_id(start, part, k, transport),
            transport=transport,
            window_start_ns=start,
            window_end_ns=window.end_ns,
            source_partition=part,
            source_workload=k[0],
            destination_workload=k[1],
            source_namespace=pc.source_namespace,
            destination_namespace=pc.destination_namespace,
            source_zone=k[2],
            destination_zone=k[3],
            cost_class=k[4],
            priced=pc.priced,
            cloud=table.cloud,
            connections=pc.connections,
            bytes_source_to_destination=pc.bytes_s2d,
            bytes_destination_to_source=pc.bytes_d2s,
            cost_usd=publishable(pc.usd_source + pc.usd_destination),
            cost_usd_source=publishable(pc.usd_source),
            cost_usd_destination=publishable(pc.usd_destination),
        )
        for k, pc in sorted(pairs.items(), key=lambda kv: tuple(x or "" for x in kv[0]))
    ]
    rollup_records = [
        CostRollupMetric(
            metric_id=rollup_id(start, part, scope, name, transport),
            transport=transport,
            window_start_ns=start,
            window_end_ns=window.end_ns,
            source_partition=part,
            scope=scope,  # type: ignore[arg-type]
            name=name,
            bytes_sent=r.bytes_sent,
            bytes_received=r.bytes_received,
            cost_usd=publishable(r.usd),
            cost_usd_by_class={c: publishable(v) for c, v in sorted(r.usd_by_class.items())},
            bytes_by_class=dict(sorted(r.bytes_by_class.items())),
        )
        for (scope, name), r in sorted(rollups.items())
    ]
    return pair_records, rollup_records
