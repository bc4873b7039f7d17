"""``flowscope``: one command for everything a user runs.

Each subcommand is the existing entry point of its component, imported only when chosen
(faust and libbpf are slow to import and not needed for another command's ``--help``); the
remaining arguments go to it untouched, so its own parser states every setting, its
environment variable and its default, and ``python -m <component>`` keeps working.
To add a command, add one line to ``COMMANDS``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast


@dataclass(frozen=True)
class Command:
    target: str  # "module:function"; the function takes argv and returns an exit code
    summary: str


COMMANDS: dict[str, Command] = {
    "collector": Command("collector.__main__:main", "node agent: BPF -> raw topics (root)"),
    "enricher": Command("enricher.__main__:main", "publish k8s metadata | join raw records"),
    "processors": Command("processors.__main__:main", "metrics and alerts per window (faust)"),
    "topics": Command("flowscope.__main__:topics_main", "create or check every flowscope topic"),
    "tail": Command("consumers.tail:main", "follow a topic, decoded and filtered"),
    "top": Command("consumers.top.app:main", "live view of the metric topics"),
    "exporter": Command("consumers.exporter:main", "Prometheus /metrics of the metric topics"),
    "sink": Command("consumers.sink:main", "enriched streams into Iceberg tables"),
    "alerts": Command("consumers.alerts:main", "forward the alerts topic to Alertmanager"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: flowscope COMMAND [ARGS...]    (flowscope COMMAND --help for its settings)",
        "",
        "commands:",
        *(f"  {name.ljust(width)}  {cmd.summary}" for name, cmd in COMMANDS.items()),
    ]
    return "\n".join(lines)


def resolve(name: str) -> Callable[[Sequence[str] | None], int]:
    module_name, _, function = COMMANDS[name].target.partition(":")
    module = importlib.import_module(module_name)
    return cast(Callable[[Sequence[str] | None], int], getattr(module, function))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"flowscope: unknown command {name!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return resolve(name)(rest)


if __name__ == "__main__":
    sys.exit(main())
