"""Shared core of flowscope: record types, topic names, codecs and the Kafka wrapper.

Collector, enricher and processors all import from here so that there is exactly one
definition of every record that crosses a Kafka topic.
"""

SCHEMA_VERSION = 1
