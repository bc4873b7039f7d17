"""A real Apache Kafka broker (KRaft, jars from Maven Central) for tests and the demo.

    python -m devbroker fetch|start|stop|status|env [--brokers 3] [--sasl-ssl-port N]

or from Python::

    broker = devbroker.Broker()      # 127.0.0.1:9092, state in <repo>/.state/kafka
    broker.start()                   # no-op if already running
    broker.bootstrap                 # "127.0.0.1:9092"

    devbroker.Broker(port=..., sasl_ssl_port=...)   # also SASL_SSL, .client_security()
    devbroker.Cluster(state_dir, port)              # three nodes, RF 3, min.insync 2
"""

from __future__ import annotations

from devbroker.broker import Broker, BrokerStatus, ClientSecurity
from devbroker.cluster import Cluster
from devbroker.errors import DevBrokerError
from devbroker.layout import DEFAULT_STATE_DIR

__all__ = [
    "DEFAULT_STATE_DIR",
    "Broker",
    "BrokerStatus",
    "ClientSecurity",
    "Cluster",
    "DevBrokerError",
]
