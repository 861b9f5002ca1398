"""Names of ASGI extensions the proxy offers (proxy.server) and uses (proxy.responses)."""

from __future__ import annotations

__all__ = ["ZEROCOPY_SEND"]

# asgiref's "Zero Copy Send": {"type": ZEROCOPY_SEND, "file", "offset", "count", "more_body"}
ZEROCOPY_SEND = "http.response.zerocopysend"
