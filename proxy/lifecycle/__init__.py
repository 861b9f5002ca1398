"""The cache's lifecycle: the inventory kept in step with the cache, the size budget, pins, ``ls`` and ``gc``.

Storage mechanics (the SQLite inventory, read leases, the accounting decorator) live in ``storage/``; this package
holds the policies and the background work, and is wired only by :mod:`proxy.app` and the CLI commands. What the
processes or replicas sharing a cache agree on (turns, reads, pins) is behind :mod:`.shared`'s Protocols.
"""
