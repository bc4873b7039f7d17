"""``flowscope top``: a live terminal view of the metric topics (views, model, terminal)."""
