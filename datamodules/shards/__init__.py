"""Shard writers (the `perceiver-lit-shards` tool): files -> WebDataset tar shards + index.json counts."""
