"""Stream processors: faust-streaming apps that turn enriched records into windowed metrics."""


class ProcessorsError(Exception):
    """The processors' root error: ``python -m processors`` ends with its message."""
