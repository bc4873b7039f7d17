"""The publisher: Kubernetes objects to the compacted metadata topic."""
