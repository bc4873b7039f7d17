"""DNS metrics per client, server and name group per window."""
