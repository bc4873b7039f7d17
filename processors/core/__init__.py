"""What every stage shares: windows, sketches, alerts, the faust runtime."""
