"""Images, containers and labels, end to end: pods with their own images and labels on nodes
with a rack label -> real sockets -> BPF -> collector -> Kafka -> enricher -> processors.
Both ends of every enriched record carry what the Pod and Node objects say (the enricher's
selection of labels only), and the cost roll-ups per team, per rack and per region are
exact."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from demo.readout import TopicReader
from demo.services import PipelineSettings, publish_metadata, running_pipeline
from flowscope.codec import JsonCodec
from flowscope.records import CostRollupMetric, Endpoint, EnrichedTcpConnection
from flowscope.topics import Topics
from processors.core.dedupe import FirstPerId
from simnode import Cluster, NodeSpec, Pod
from simnode.objects import image_id

REPO = Path(__file__).resolve().parents[3]
N_CONNECTIONS = 6
SEND_BYTES, REPLY_BYTES = 40_000, 9_000
PORT = 8080
WINDOW_S, GRACE_S = 3.0, 2.0
RACK = "topology.example.com/rack"
CROSS_ZONE_USD_PER_GB = Decimal("0.01")  # aws, each direction (config/prices.yaml)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    nodes = [
        NodeSpec("node-a1", zone="zone-a", labels={RACK: "r1", "pool": "general"}),
        NodeSpec("node-b1", zone="zone-b", labels={RACK: "r7", "pool": "general"}),
    ]
    with Cluster(nodes) as c:
        yield c


def test_images_and_labels_on_both_ends_and_cost_per_team_and_rack(
    root_required: None, kafka_bootstrap: str, topics: Topics, cluster: Cluster, tmp_path: Path
) -> None:
    server = cluster.add_pod(
        "checkout",
        node="node-b1",
        namespace="shop",
        image="registry.example:5000/shop/checkout:2.4",
        labels={"team": "payments", "app.kubernetes.io/name": "checkout", "tier": "backend"},
    )
    client = cluster.add_pod(
        "frontend",
        node="node-a1",
        namespace="shop",
        image="docker.io/shop/frontend",
        container="web",
        labels={"team": "storefront", "version": "v3", "tier": "frontend"},
    )
    publish_metadata(kafka_bootstrap, topics, cluster.write_objects(tmp_path / "objects.yaml"))
    prices = yaml.safe_load((REPO / "config" / "prices.yaml").read_text())
    prices |= {"rollup_labels": ["team"], "rollup_node_labels": [RACK]}
    prices_path = tmp_path / "prices.yaml"
    prices_path.write_text(yaml.safe_dump(prices))
    settings = PipelineSettings(
        bootstrap=kafka_bootstrap,
        topics=topics,
        node_name="sim-host",
        log_dir=tmp_path / "logs",
        window_s=WINDOW_S,
        grace_s=GRACE_S,
        processor_args=("--prices", str(prices_path)),
        extra_env={"FLOWSCOPE_ENRICHER_NODE_LABELS": RACK},
    )
    tcp_reader = TopicReader(kafka_bootstrap, topics.enriched_tcp)
    cost_reader = TopicReader(kafka_bootstrap, topics.metrics_cost_rollups)

    def ours(e: EnrichedTcpConnection) -> bool:
        return (e.client.address, e.server.address, e.server.port) == (client.ip, server.ip, PORT)

    want = {
        ("label", "team=storefront"),
        ("label", "team=payments"),
        ("node_label", f"{RACK}=r1"),
        ("node_label", f"{RACK}=r7"),
    }
    sent_total = N_CONNECTIONS * (SEND_BYTES + REPLY_BYTES)
    try:
        with running_pipeline(settings):
            proc = server.start_server(PORT, reply_bytes=REPLY_BYTES)
            server.wait_listening(PORT, proc=proc)
            summary = client.run_client(
                server.ip,
                PORT,
                count=N_CONNECTIONS,
                send_bytes=SEND_BYTES,
                expect_reply_bytes=REPLY_BYTES,
            )
            server.stop_server(proc)
            assert summary.completed == N_CONNECTIONS, summary
            enriched = [
                e
                for e in tcp_reader.read_until(
                    JsonCodec(EnrichedTcpConnection),
                    lambda es: sum(map(ours, es)) >= 2 * N_CONNECTIONS,
                    timeout_s=60,
                )
                if ours(e)
            ]
            dedupe, codec = FirstPerId(), JsonCodec(CostRollupMetric)
            rollups: list[CostRollupMetric] = []

            def done() -> bool:
                got = _totals(rollups)
                return all(got.get(k, (0, 0))[1] >= sent_total for k in want)

            for _ in range(int(WINDOW_S + GRACE_S + 60)):
                rollups += dedupe.keep(codec.decode(v) for v in cost_reader.read(1.0))
                if done():
                    break
            rollups += dedupe.keep(codec.decode(v) for v in cost_reader.read(WINDOW_S + GRACE_S))
    finally:
        tcp_reader.close()
        cost_reader.close()

    # Every record, from either observer, names both ends with what the objects say.
    roles = sorted(e.observer_role for e in enriched)
    assert roles == ["client"] * N_CONNECTIONS + ["server"] * N_CONNECTIONS, roles
    for e in enriched:
        _check_end(
            e.client,
            client,
            "web",
            "docker.io/shop/frontend",
            ["latest"],
            {"team": "storefront", "version": "v3"},
            "r1",
        )
        _check_end(
            e.server,
            server,
            "checkout",
            "registry.example:5000/shop/checkout",
            ["2.4"],
            {"team": "payments", "app.kubernetes.io/name": "checkout"},
            "r7",
        )

    # Cross-zone: $0.01/GB sent and $0.01/GB received, each end paying its own share.
    share = float(Decimal(sent_total) * CROSS_ZONE_USD_PER_GB / 10**9)
    totals = _totals(rollups)
    for k in want:
        assert totals[k] == (share, sent_total), (k, totals.get(k), share)
    # Both ends are on nodes of region-1 (the collector's own host processes are on no node).
    assert totals[("region", "region-1")] == (2 * share, 2 * sent_total), totals


def _check_end(
    end: Endpoint,
    pod: Pod,
    container: str,
    image: str,
    tags: list[str],
    labels: dict[str, str],
    rack: str,
) -> None:
    assert (end.pod_uid, end.container_name) == (pod.uid, container), end
    assert (end.image_name, end.image_tags) == (image, tags), end
    assert end.image_id == image_id(pod.meta.image).rpartition("@")[2], end
    assert end.pod_labels == labels, end  # "tier" and "app" are not selected
    assert end.node_labels == {RACK: rack}, end  # "pool" is not selected
    assert (end.zone, end.region) == (pod.zone, "region-1"), end


def _totals(rollups: list[CostRollupMetric]) -> dict[tuple[str, str], tuple[float, int]]:
    usd: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    volume: dict[tuple[str, str], int] = defaultdict(int)
    for r in rollups:
        usd[(r.scope, r.name)] += Decimal(str(r.cost_usd))
        volume[(r.scope, r.name)] += r.bytes_sent + r.bytes_received
    return {k: (float(usd[k].quantize(Decimal("1e-9"))), volume[k]) for k in usd}
