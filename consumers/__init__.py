"""Readers of flowscope's topics for people and other systems: ``tail`` (a topic, decoded
and filtered), ``top`` (a live terminal view of the metric topics) and ``exporter``
(Prometheus metrics of the metric topics). Nothing here writes to Kafka."""
