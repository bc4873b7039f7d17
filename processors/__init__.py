"""Stream processors: faust-streaming apps that turn enriched records into windowed metrics."""
