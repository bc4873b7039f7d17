"""The enricher: publishes Kubernetes metadata to a compacted topic and joins raw connection
records with it (both ends named, time-aware by IP for the remote end)."""

from __future__ import annotations


class EnricherError(Exception):
    """Root of every error the enricher raises on purpose."""
