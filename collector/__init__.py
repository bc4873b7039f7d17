"""flowscope's node agent: TCP connections from the kernel (eBPF) to Kafka.

Pipeline: ``libbpf`` loads and attaches ``bpf/tcpconn.bpf.o`` -> ``ringbuf`` copies ready
events out in batches -> ``events`` decodes them -> ``attribution`` names the local pod by
the socket's cgroup -> ``app`` builds :class:`flowscope.records.RawTcpConnection` records and
produces them to Kafka.
"""

from collector.errors import CollectorError

__all__ = ["CollectorError"]
