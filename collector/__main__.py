"""``python -m collector``: the only place that reads the environment. ``--help`` lists
every setting with its FLOWSCOPE_* variable."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from types import FrameType

from collector.app import Collector
from collector.dns.app import start_dns
from collector.drops.reporter import DropReporter, start_drops
from collector.errors import CollectorError
from collector.health import HealthReporter, MetricsServer
from collector.kernel.pins import uninstall
from collector.node.attribution import CgroupResolver
from collector.node.nat import NatResolver, parse_cidrs
from collector.settings import Settings, parse_settings
from collector.tcp.source import TcpConnSource
from collector.udp.flows import UdpFlowSource, UdpReporter
from flowscope import kafka_security
from flowscope.deadline import Deadline
from flowscope.kafka import KafkaUnavailable, RecordProducer, wait_for_broker

log = logging.getLogger("collector")


def run(settings: Settings) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    resolver = CgroupResolver(settings.cgroup_root)
    resolver.refresh()
    cidrs = parse_cidrs(settings.service_cidrs)
    nat = NatResolver(cidrs) if cidrs else None
    kafka_security.register(settings.bootstrap_servers, settings.kafka_security)
    if settings.kafka_security.protocol != "PLAINTEXT":
        # Refused credentials or an untrusted certificate end the start here, with the cause;
        # an unreachable cluster does not: the producer buffers until it is back.
        wait_for_broker(settings.bootstrap_servers, timeout_s=10.0, require=False)
    producer = RecordProducer(settings.bootstrap_servers, settings.kafka_options)
    metrics: MetricsServer | None = None
    with ExitStack() as stack:
        source = stack.enter_context(
            TcpConnSource(
                settings.bpf_object,
                ringbuf_bytes=settings.ringbuf_bytes,
                tracefs=settings.tracefs,
                mount_tracefs=settings.mount_tracefs,
                interim_interval_s=settings.interim_interval_s,
                wakeup_bytes=settings.wakeup_bytes,
                pin_dir=settings.tcp_pin_dir,
            )
        )
        # The pipeline's own connections (its Kafka, reconnects to a broker that is down
        # included) are counted apart in the kernel, not reported as the cluster's.
        own = settings.own_endpoints()
        log.info("pipeline endpoints %s: %d keys", own, source.set_pipeline_endpoints(own))
        udp: UdpReporter | None = None
        if settings.udp_interval_s:
            udp_source = stack.enter_context(
                UdpFlowSource(settings.udp_bpf_object, settings.cgroup_root)
            )
            udp = UdpReporter(
                udp_source,
                resolver,
                producer.produce,
                settings.topics.raw_udp,
                settings.node_name,
                settings.udp_interval_s,
                nat=nat,
            )
        drops: DropReporter | None = None
        if settings.drops_interval_s:
            drops = start_drops(
                stack,
                settings.drops_bpf_object,
                settings.tracefs,
                settings.mount_tracefs,
                resolver,
                producer.produce,
                settings.topics.raw_drops,
                settings.node_name,
                settings.drops_interval_s,
            )
        health: HealthReporter | None = None
        periodic: list[Callable[[], None]] = [lambda: health.tick() if health else None]
        if udp is not None:
            periodic.append(udp.tick)
        if drops is not None:
            periodic.append(drops.tick)
        dns = start_dns(
            stack,
            settings.dns,
            settings.cgroup_root,
            resolver,
            producer,
            settings.topics.raw_dns,
            settings.node_name,
            nat,
        )
        if dns is not None:
            periodic.append(dns.tick)
        collector = Collector(
            source,
            producer,
            resolver,
            node_name=settings.node_name,
            topic=settings.topics.raw_tcp,
            max_batch=settings.max_batch,
            poll_interval_s=settings.poll_interval_s,
            stats_interval_s=settings.stats_interval_s,
            nat=nat,
            periodic=periodic,
            batch_records=settings.batch_records,
            batch_bytes=settings.batch_bytes,
        )

        def counters() -> dict[str, int]:
            values = collector.counters()
            if udp is not None:
                values.update(udp.counters())
            if drops is not None:
                values.update(drops.counters())
            if dns is not None:
                values.update(dns.counters())
            return values

        health = HealthReporter(
            counters,
            producer.produce,
            settings.health_topic,
            settings.node_name,
            settings.health_interval_s,
            dropped_by_key=collector.dropped_by_key,
        )
        try:
            if settings.metrics_port:
                metrics = MetricsServer(counters, settings.metrics_port, probes=[collector.probe])
            # Others (the demo, tests) wait for this line: the programs are attached by now.
            log.info(
                "collector ready: producing to %s at %s (%s) as node %s (cgroup root %s, "
                "metrics port %s, udp %s)",
                settings.topics.raw_tcp,
                settings.bootstrap_servers,
                settings.kafka_security.describe(),
                settings.node_name,
                settings.cgroup_root,
                metrics.port if metrics is not None else "off",
                f"every {settings.udp_interval_s}s" if udp is not None else "off",
            )
            collector.probe.set_ready()  # the programs are attached; the loop beats from now
            collector.run(stop)
        finally:
            # One bound for all of shutdown's Kafka waits: with the broker away it ends on
            # time, and what could not be delivered is counted (records_undelivered).
            deadline = Deadline(settings.flush_timeout_s)
            if dns is not None:
                dns.shutdown()  # before the producer is flushed
            collector.shutdown(deadline.left())
            if udp is not None:
                udp.finish()
            if drops is not None:
                drops.finish()
            health.tick(force=True)  # the last counters, delivered if the broker is there
            undelivered = producer.close(deadline.left())
            log.info("final %s", collector.stats_line())
            log.info("shutdown took %.1fs; %d records undelivered", deadline.elapsed(), undelivered)
            if metrics is not None:
                metrics.close()
            if nat is not None:
                nat.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = parse_settings(argv, dict(os.environ))
    except CollectorError as exc:
        print(f"collector: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if settings.uninstall:
        if settings.pin_root is None:
            print("collector: --uninstall needs --pin-root", file=sys.stderr)
            return 2
        removed = uninstall(settings.pin_root, settings.node_name)
        log.info(
            "uninstalled: %d pins removed under %s",
            len(removed),
            settings.pin_root / settings.node_name,
        )
        return 0
    try:
        return run(settings)
    except (CollectorError, KafkaUnavailable) as exc:
        print(f"collector: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
