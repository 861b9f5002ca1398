from __future__ import annotations

from functools import lru_cache

from starlette.requests import Request
from starlette.responses import Response

from proxy.endpoints.references import parse_reference
from proxy.endpoints.target import echo_namespace, target
from proxy.media_types import Accept
from proxy.responses import manifest_response, x_cache
from proxy.services import services
from storage.digest import Digest

__all__ = ["get_manifest"]

# Accept headers and references up to this long are parsed once per process (clients send the same few Accept
# headers over and over, and pull the same tags and digests); longer ones are parsed each time rather than kept.
_REMEMBERED_ACCEPT = 512
_REMEMBERED_REFERENCE = 160  # a sha512 digest is 135 characters, a tag at most 128


async def get_manifest(request: Request) -> Response:
    svc = services(request)
    where = target(request)
    origin, repository = where.origin, where.repository
    reference = _reference(request.path_params["reference"])
    accept = _accept(request.headers.getlist("accept"))
    if isinstance(reference, str):
        manifest = await svc.manifests.by_tag(origin, repository, reference, accept)
    else:
        manifest = await svc.manifests.by_digest(origin, repository, reference, accept)
    if request.headers.get("if-none-match") == f'"{manifest.digest}"':
        headers = {"ETag": f'"{manifest.digest}"', "X-Cache": x_cache(manifest)}
        return echo_namespace(Response(status_code=304, headers=headers), where)
    return echo_namespace(manifest_response(manifest, head=request.method == "HEAD"), where)


def _reference(value: str) -> Digest | str:
    # Validating a digest checks each of its characters in Python: about 3 us, a twentieth of a hit.
    return _parse_reference(value) if len(value) <= _REMEMBERED_REFERENCE else parse_reference(value)


@lru_cache(maxsize=256)
def _parse_reference(value: str) -> Digest | str:
    return parse_reference(value)  # an invalid one raises, and is not remembered


def _accept(values: list[str]) -> Accept:
    if len(values) == 1 and len(values[0]) <= _REMEMBERED_ACCEPT:
        return _parse_accept(values[0])
    return Accept.parse(values)


@lru_cache(maxsize=64)
def _parse_accept(value: str) -> Accept:
    return Accept.parse([value])
