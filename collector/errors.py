"""The collector's root exception: every failure it expects derives from it."""

from __future__ import annotations


class CollectorError(RuntimeError):
    """A setting, a kernel feature or a dependency the collector needs is missing or wrong."""
