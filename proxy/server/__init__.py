"""Serving the app under uvicorn, with what uvicorn lacks: zero-copy blob sends and connection hygiene.

``uvicorn_internals`` is the one module that knows uvicorn's private classes; the others go through it.
"""

from __future__ import annotations

from proxy.server.runner import EXIT_FAILURE, EXIT_OK, EXIT_REFUSED, serve

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_REFUSED", "serve"]
