"""UDP flow metrics: cost pairs and roll-ups per window."""
