"""Cluster operations: submitting metaorch as a Ray job (``cluster.jobs``); the rest of cluster/ is configs."""
