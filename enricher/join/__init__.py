"""The joiners: raw records + the metadata topic -> enriched records."""
