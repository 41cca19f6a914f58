"""Step *train*: COMBO-family models trained on shard data sets with Ray Train; checkpoints."""
