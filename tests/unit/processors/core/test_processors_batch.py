"""The TCP aggregator's one-loop batch path counts exactly as record-by-record adds do."""

from __future__ import annotations

import random

from processors_records import T0, S, conn, external, pod

from flowscope.records import EnrichedTcpConnection
from processors.core.windows import InvalidRecord
from processors.tcp.connections import ConnectionAggregator

WINDOW = 10 * S
GRACE = 2 * S
ENDS = [pod("web", "zone-a"), pod("api", "zone-b", service="api"), pod("db", "zone-a"), external()]


def records(rng: random.Random, n: int) -> list[EnrichedTcpConnection]:
    out = []
    for _ in range(n):
        client, server = rng.sample(ENDS, 2)
        role = rng.choice(("client", "client", "server"))
        out.append(
            conn(
                T0 + rng.randrange(-WINDOW, 3 * WINDOW),  # the first window is already late
                client,
                server,
                role=role,
                client_observed=rng.random() < 0.8,
                c2s=-1 if rng.random() < 0.05 else rng.randrange(0, 10**6),  # -1: rejected
                s2c=rng.randrange(0, 10**6),
                latency_us=rng.choice((None, rng.randrange(0, 5000))),
                srtt_us=rng.randrange(0, 3000),
                outcome=rng.choice(("closed", "closed", "refused", "open")),
                interim=rng.random() < 0.2,
                sequence=rng.randrange(0, 3),
                segs_out=rng.randrange(0, 40),
                retrans_segs=rng.randrange(0, 3),
            )
        )
    return out


def snapshot(agg: ConnectionAggregator) -> tuple[dict[str, int], dict[object, object]]:
    cells: dict[object, object] = {}
    for w in agg.close_ready(T0 + 10 * WINDOW):
        for key, c in w.cells.items():
            cells[(w.partition, w.start_ns, key)] = (
                c.client_namespace,
                c.server_namespace,
                c.connections,
                c.bytes_client_to_server,
                c.bytes_server_to_client,
                c.retrans_segs,
                c.segs_out,
                c.outcomes,
                c.connect_sketch.to_dict(),
                c.rtt_sketch.to_dict(),
            )
    return agg.counters.as_dict(), cells


def test_batches_count_exactly_as_single_records() -> None:
    rng = random.Random(3)
    batched, single = ConnectionAggregator(WINDOW, GRACE), ConnectionAggregator(WINDOW, GRACE)
    for agg in (batched, single):  # the window before T0 is handed out: its records are late
        agg.add(0, conn(T0 - WINDOW, ENDS[0], ENDS[1]))
        agg.close_ready(T0 + GRACE)
    for message in range(40):
        part = message % 2
        batch = records(rng, rng.randrange(1, 60))
        result = batched.add_batch(part, batch)
        newest, newest_event, rejected = None, -1, []
        for record in batch:
            try:
                start = single.add(part, record)
            except InvalidRecord as exc:
                rejected.append((record, str(exc)))
                continue
            newest_event = max(newest_event, record.end_time_ns)
            if start is not None and (newest is None or start > newest):
                newest = start
        assert (result.newest_start_ns, result.newest_event_ns) == (newest, newest_event)
        assert result.rejected == rejected
        assert batched.pending_records() == single.pending_records()
        assert batched.open_windows() == single.open_windows()
    counters, cells = snapshot(batched)
    assert (counters, cells) == snapshot(single)
    assert counters["late_dropped"] and counters["rejected"] and counters["duplicates_skipped"]
    assert len(cells) > 10
