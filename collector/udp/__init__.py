"""UDP volume per (local, remote) pair and window: raw.udp records."""
