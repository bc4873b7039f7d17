"""The TCP pair processor without faust: bytes in, (key, bytes) out, dead letters for bad input.

app.py only moves bytes between Kafka and this object, so decoding, dead-lettering, window
closing and the counters are all testable without a broker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flowscope.codec import DecodeError, JsonCodec
from flowscope.records import DeadLetter, EnrichedTcpConnection, TcpPairMetric
from processors.pairs import AddOutcome, InvalidRecord, Watermark, WindowedPairAggregator

log = logging.getLogger(__name__)

STAGE = "processors.tcp_pairs"


@dataclass(frozen=True)
class Source:
    """Where a message came from, for dead letters and late-record reports."""

    topic: str
    partition: int
    offset: int
    key: bytes | None


@dataclass
class OutputCounters:
    dead_lettered: int = 0
    metrics_sent: int = 0
    metrics_delivered: int = 0
    metrics_failed: int = 0
    dead_letters_delivered: int = 0


class TcpPairsProcessor:
    def __init__(
        self, window_ns: int, grace_ns: int, idle_allowance_ns: int, alpha: float = 0.01
    ) -> None:
        self.aggregator = WindowedPairAggregator(window_ns, grace_ns, alpha)
        self.watermark = Watermark(idle_allowance_ns)
        self.outputs = OutputCounters()
        self._decoder = JsonCodec(EnrichedTcpConnection)
        self._metric_codec = JsonCodec(TcpPairMetric)
        self._dead_codec = JsonCodec(DeadLetter)
        self._late_since_report = 0

    def handle(self, value: bytes | None, source: Source, now_ns: int) -> bytes | None:
        """Aggregate one message. Returns an encoded DeadLetter if the message is unusable."""
        try:
            record = self._decoder.decode(value)
            outcome = self.aggregator.add(record)
        except (DecodeError, InvalidRecord) as exc:
            self.outputs.dead_lettered += 1
            return self._dead_letter(str(exc), value, source, now_ns)
        self.watermark.observe(record.end_time_ns)
        if outcome is AddOutcome.LATE:
            # Logged once per report interval with an example, then summarised in the
            # counters: a backlog of late records must not flood the log.
            if self._late_since_report == 0:
                log.warning(
                    "late record dropped (its window is already published): end_time_ns=%d "
                    "window_start_ns=%d watermark_ns=%s %s->%s from %s[%d]@%d",
                    record.end_time_ns,
                    self.aggregator.window_start(record.end_time_ns),
                    self.aggregator.watermark_ns,
                    record.client.workload_key(),
                    record.server.workload_key(),
                    source.topic,
                    source.partition,
                    source.offset,
                )
            self._late_since_report += 1
        return None

    def close_ready(self, now_ns: int) -> list[tuple[bytes, bytes]]:
        """Encoded (key, value) for every metric whose window is closed by now."""
        metrics = self.aggregator.close_ready(self.watermark.current(now_ns))
        return [(metric_key(m).encode(), self._metric_codec.encode(m)) for m in metrics]

    def report(self) -> dict[str, int]:
        """All counters, for the periodic log line."""
        late_recent, self._late_since_report = self._late_since_report, 0
        return {
            **self.aggregator.counters.as_dict(),
            "late_since_last_report": late_recent,
            "dead_lettered": self.outputs.dead_lettered,
            "dead_letters_delivered": self.outputs.dead_letters_delivered,
            "metrics_sent": self.outputs.metrics_sent,
            "metrics_delivered": self.outputs.metrics_delivered,
            "metrics_failed": self.outputs.metrics_failed,
            "open_windows": len(self.aggregator.open_windows()),
        }

    def _dead_letter(self, reason: str, value: bytes | None, source: Source, now_ns: int) -> bytes:
        return self._dead_codec.encode(
            DeadLetter(
                stage=STAGE,
                reason=reason,
                source_topic=source.topic,
                partition=source.partition,
                offset=source.offset,
                key=None if source.key is None else source.key.decode("utf-8", "replace"),
                payload="" if value is None else value.decode("utf-8", "replace"),
                time_ns=now_ns,
            )
        )


def metric_key(metric: TcpPairMetric) -> str:
    """``client|server`` workload keys: every window of a pair lands on one partition."""
    return f"{metric.client_workload}|{metric.server_workload}"
