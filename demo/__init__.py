"""Runs the whole flowscope pipeline on a simulated node (used by the demo and the e2e tests)."""
