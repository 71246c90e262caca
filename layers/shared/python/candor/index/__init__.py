"""The vector index of a collection, kept in step with the faces table, and its shards."""
