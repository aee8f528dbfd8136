"""Model loading, length-bucketed batching, pooling, and the resumable, shardable extraction runner."""
