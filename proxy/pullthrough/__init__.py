"""Pull-through logic: cache first, upstream on a miss. Returns data and byte streams, never HTTP responses."""
