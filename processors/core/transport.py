"""faust's aiokafka transport, reading committed records only.

The enricher writes enriched.* in Kafka transactions (enricher/join/transactions.py): records of an
aborted transaction (a killed enricher's last batch, produced again by its successor) stay in
the log, and a read_uncommitted consumer would count them twice. faust sets
``isolation_level="read_committed"`` only in its own exactly-once mode, which also makes its
producers transactional and changes how it commits; this transport takes the reading side
alone. The processors' own exactly-once story stays the one in processors/app.py (acks after
publication, windows with deterministic ids).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import TopicPartition  # type: ignore[import-untyped]
from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger("processors")


class _ReadCommittedThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        # faust 0.15 picks the isolation level from ``consumer.in_transaction`` here and
        # nowhere else in this method; it is restored at once (this runs synchronously, on
        # the consumer thread, before the consumer exists).
        consumer = self.consumer
        saved = consumer.in_transaction
        consumer.in_transaction = True
        try:
            return super()._create_worker_consumer(transport)
        finally:
            consumer.in_transaction = saved

    async def on_thread_stop(self) -> None:
        # Measured: with the broker away, aiokafka's fetcher close re-raises the cancellation
        # of a fetch task sleeping on its retry backoff; out of here it kills the thread
        # before it reports stopped, and the worker then waits mode's 60 s for it.
        try:
            await super().on_thread_stop()
        except asyncio.CancelledError:
            log.warning("consumer stopped with a fetch cancelled (broker unreachable)")


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ReadCommittedThread:
        return _ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)


class ReadCommittedTransport(faust_aiokafka.Transport):
    Consumer = _ReadCommittedConsumer


def backlogged(app: Any, topic: str, partitions: list[int]) -> list[int]:
    """Of ``partitions`` of ``topic`` (assigned here), those with committed records not
    fetched yet: no position yet (offsets being looked up, a fetch not yet answered) or a
    position short of the last stable offset. Read from aiokafka's fetch state, which its
    own thread writes: a stale read errs one tick either way, never loses a record."""
    thread = getattr(app.consumer, "_thread", None)
    consumer = getattr(thread, "_consumer", None)
    subscription = getattr(getattr(consumer, "_subscription", None), "subscription", None)
    assignment = getattr(subscription, "assignment", None)
    if assignment is None:  # not consuming at all yet: everything assigned is unread
        return list(partitions)
    lagging = []
    for p in partitions:
        state = assignment.state_value(TopicPartition(topic, p))
        unread = state is None or not state.has_valid_position or state.lso is None
        if unread or state.position < state.lso:
            lagging.append(p)
    return lagging
