"""From raw multilingual text to training batches: readers, normalization, shards, loader."""
