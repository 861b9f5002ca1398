"""An old client that accepts only Docker schema2 manifests asks the proxy for a multi-arch tag before anyone else.

Distribution answers such a client with the linux/amd64 image of a manifest list. The proxy must pass that on to
this client only: what it keeps for the tag, and so what every later client gets, is the list (issue 7, item 2).
"""

from __future__ import annotations

import httpx

from tests.harness.images import PushedImage
from tests.harness.oci import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from tests.harness.proxy_server import ProxyServer

EVERY_MANIFEST_TYPE = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST))
TIMEOUT = 30.0


def schema2_only_client_first(proxy: ProxyServer, manifest_list: PushedImage, *, restart: bool) -> None:
    """GET ``manifest_list``'s tag as a schema2-only client (it gets the amd64 image), then restart the proxy on the
    same cache if ``restart``."""
    url = f"{proxy.url}/v2/{manifest_list.repository}/manifests/{manifest_list.tag}"
    response = httpx.get(url, headers={"Accept": DOCKER_MANIFEST}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.headers["docker-content-digest"] == manifest_list.child("amd64").digest
    if restart:
        proxy.stop()
        proxy.start()


def tag_digest(proxy: ProxyServer, image: PushedImage) -> str:
    """What a HEAD of ``image``'s tag with every manifest type in Accept says the tag is."""
    url = f"{proxy.url}/v2/{image.repository}/manifests/{image.tag}"
    response = httpx.head(url, headers={"Accept": EVERY_MANIFEST_TYPE}, timeout=TIMEOUT)
    assert response.status_code == 200
    return response.headers["docker-content-digest"]
