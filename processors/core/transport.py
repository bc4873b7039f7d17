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

from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka


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


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ReadCommittedThread:
        return _ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)


class ReadCommittedTransport(faust_aiokafka.Transport):
    Consumer = _ReadCommittedConsumer
