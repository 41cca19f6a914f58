"""Step *write shards*: the versioned WebDataset sample schema, the manifest, the streaming loader."""
