"""flowscope's node agent: TCP connections from the kernel (eBPF) to Kafka.

Pipeline: ``libbpf`` loads and attaches ``bpf/tcpconn.bpf.o`` -> ``ringbuf`` copies ready
events out in batches -> ``events`` decodes them (outcome, interim deltas) -> ``attribution``
names the local pod by the socket's cgroup -> ``nat`` resolves ClusterIP destinations through
the socket netns's conntrack -> ``record`` encodes :class:`flowscope.records.RawTcpConnection`
-> ``app`` produces them to Kafka. The hot path from ring buffer bytes to Kafka messages is
``messages``: ``_encode.c`` (``make native``) when built, else ``events`` and ``record``.
Beside it, on the loop's periodic hook: ``udp`` (``bpf/udpflow.bpf.o``, UDP volume per pair
per window) and ``health`` (Prometheus endpoint, health records).
"""

from collector.errors import CollectorError

__all__ = ["CollectorError"]
