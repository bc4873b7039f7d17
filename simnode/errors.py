"""The one root exception of simnode."""

from __future__ import annotations


class SimNodeError(Exception):
    """A simulated-cluster operation failed (the message says which command and why)."""
