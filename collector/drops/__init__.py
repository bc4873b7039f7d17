"""Kernel packet drops with their reason: raw.drops records."""
