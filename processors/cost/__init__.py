"""Data-transfer cost: the price table and cost records per window."""
