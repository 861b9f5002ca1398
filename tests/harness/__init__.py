"""Stand-ins for Docker Hub that the integration tests run on 127.0.0.1, one idea per module.

- ``tokens``: a token issuer like auth.docker.io (``scopes``: its Hub-like policy; ``jwt``: RS256 tokens with a
  libtrust ``kid``, the way Distribution verifies them).
- ``registry``: a real CNCF Distribution (``docker-registry``) subprocess; ``accesslog`` parses its per-request log
  for request accounting; ``htpasswd`` makes bcrypt entries for its Basic auth mode.
- ``images``: the seeded images, built offline (``layers``, ``oci``, ``blobstore``) and pushed over the registry
  HTTP API (``push``, ``challenge``).
- ``skopeo``: a real client, pulling from the registry or through the proxy.
- ``faults``: a fault-injecting reverse proxy to put in front of the registry (``fault_kinds``: the faults it
  injects; ``http1``: the HTTP/1.1 it speaks by hand).
- ``deadline``, ``ports``: bounded waits and free ports.
"""
