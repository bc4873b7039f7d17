"""The client's and server's one-line JSON summaries."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ClientSummary:
    server: str  # host:port
    local_addr: str = ""
    connections: int = 0  # attempted
    completed: int = 0  # sent everything, got the whole reply, closed
    failed: int = 0
    bytes_sent: int = 0  # payload bytes, completed connections only
    bytes_received: int = 0
    local_ports: list[int] = field(default_factory=list)  # completed connections, in order
    connect_us: list[int] = field(default_factory=list)  # connect() duration per connection
    start_time_ns: int = 0
    end_time_ns: int = 0
    errors: list[str] = field(default_factory=list)  # the first few, for the test's message

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> ClientSummary:
        data: dict[str, Any] = json.loads(line)
        return cls(**data)


@dataclass
class ServerSummary:
    port: int
    connections: int = 0
    completed: int = 0
    failed: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> ServerSummary:
        data: dict[str, Any] = json.loads(line)
        return cls(**data)
