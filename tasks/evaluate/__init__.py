"""Step *evaluate*: AVSBench-protocol scores of a checkpoint on a shard data set, and its report."""
