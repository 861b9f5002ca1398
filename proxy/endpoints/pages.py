"""Parsing the ``n`` and ``last`` pagination parameters."""

from __future__ import annotations

from starlette.requests import Request

from proxy.errors import RegistryError

__all__ = ["page_params"]

_MAX_PAGE = 10_000


def page_params(request: Request) -> tuple[int | None, str | None]:
    n_param = request.query_params.get("n")
    n: int | None = None
    if n_param is not None:
        # isdigit() alone admits "²" and other digits int() refuses.
        if not (n_param.isascii() and n_param.isdigit()) or len(n_param) > 6 or int(n_param) > _MAX_PAGE:
            raise RegistryError(400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested")
        n = int(n_param)
    last = request.query_params.get("last")
    if last is not None and len(last) > 512:
        raise RegistryError(400, "PAGINATION_NUMBER_INVALID", "invalid last parameter")
    return n, last
