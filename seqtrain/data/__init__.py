"""Shard format and streaming data loaders."""
