"""docs/settings.md: every command's settings, generated from their declarations.

Written by ``python -m flowscope settings-doc``; a unit test fails when the committed file
differs from what this generates, so the reference cannot drift from the code.
"""

from __future__ import annotations

import importlib

from flowscope.resources import SOURCE_ROOT
from flowscope.settings import Section, reference

DEFAULT_PATH = SOURCE_ROOT / "docs" / "settings.md"

INTRO = """# Settings reference

Generated from the settings' declarations by `python -m flowscope settings-doc`; do not edit.

Every setting is an option of its command and, where a variable is named, a `FLOWSCOPE_*`
environment variable; the option wins over the variable, the variable over the default.
Values from the environment are checked like options: a bad one stops the command at start,
naming the option, the variable and the valid values. A true/false setting takes `true`,
`false`, `1`, `0`, `yes`, `no`, `on` or `off` (an option alone means true). Durations are in
seconds and say so (`--*-seconds`, `*_SECONDS`). A secret's value is never shown, and the
Kafka passwords are never options (a command line is visible to every user of the node).
"""


def sections() -> list[Section]:
    # Imported here: the shared package does not depend on the services it documents.
    from collector.settings import Settings as CollectorSettings
    from enricher.settings import Settings as EnricherSettings
    from flowscope.__main__ import TopicsSettings
    from flowscope.kafka_security import KafkaSecurityOptions
    from processors.settings import ProcessorSettings

    readers = [
        Section(
            f"Reader: {name}",
            f"flowscope {name}",
            None,
            summary,
            options=importlib.import_module(module).OPTIONS,
        )
        for name, module, summary in (
            ("tail", "consumers.tail", "Follows a topic, decoded and filtered."),
            ("top", "consumers.top.app", "Live view of the metric topics."),
            ("exporter", "consumers.exporter", "Prometheus /metrics of the metric topics."),
            ("sink", "consumers.sink", "Enriched streams into Iceberg tables."),
            ("alerts", "consumers.alerts", "Forwards the alerts topic to Alertmanager."),
        )
    ]
    return [
        Section(
            "Collector",
            "flowscope collector",
            CollectorSettings,
            "The node agent (a DaemonSet, root).",
        ),
        Section(
            "Enricher: publish",
            "flowscope enricher publish",
            EnricherSettings,
            "Kubernetes metadata to the compacted metadata topic.",
            only=("publish",),
        ),
        Section(
            "Enricher: join",
            "flowscope enricher join",
            EnricherSettings,
            "Raw records joined with the metadata.",
            only=("join",),
        ),
        Section(
            "Processors",
            "flowscope processors worker",
            ProcessorSettings,
            "Metrics and alerts per window (faust).",
        ),
        Section(
            "Topics",
            "flowscope topics create|check",
            TopicsSettings,
            "Creates or checks every topic.",
        ),
        Section(
            "Kafka connection",
            "every command above",
            KafkaSecurityOptions,
            "How each service connects to a secured cluster; the same settings for all.",
        ),
        *readers,
    ]


def generate() -> str:
    return reference(sections(), INTRO)
