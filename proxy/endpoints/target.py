"""Resolving a request's repository name (and containerd's ``ns``) to its upstream."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from proxy.routing import Target
from proxy.services import services

__all__ = ["TARGET_SCOPE_KEY", "echo_namespace", "target"]

# Where the request's upstream and repository are left for the access log and metrics (read once it is answered).
TARGET_SCOPE_KEY = "registry_proxy.target"


def target(request: Request) -> Target:
    """The upstream and repository a request is for, once the client is known to be allowed to pull from it."""
    svc = services(request)
    found = svc.router.resolve(request.path_params["name"], request.query_params.get("ns"))
    request.scope[TARGET_SCOPE_KEY] = found
    if svc.access is not None:
        svc.access.check(request, found.origin.registry, found.repository, found.name)
    return found


def echo_namespace(response: Response, target: Target) -> Response:
    # The distribution spec's proxying section: a registry that routes by ns SHOULD say so.
    if target.namespace is not None:
        response.headers["OCI-Namespace"] = target.namespace
    return response
