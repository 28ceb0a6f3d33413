"""Data: the synthetic world, shards, preprocessing, batching and the DataModule."""
