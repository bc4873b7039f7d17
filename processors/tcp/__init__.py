"""TCP connection metrics: latency and pair totals per window."""
