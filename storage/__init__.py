"""The content-addressed cache. Knows nothing of HTTP; see :mod:`storage.paths` for the on-disk layout."""
