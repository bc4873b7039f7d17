"""The one root exception of devbroker."""

from __future__ import annotations


class DevBrokerError(RuntimeError):
    """The dev broker could not be fetched, formatted, started or stopped; the message says why."""
