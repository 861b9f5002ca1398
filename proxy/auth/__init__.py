"""Client authentication and per-repository access: who may pull what through this proxy.

Off unless the config has an ``[auth]`` table. Then:

- ``backend``: Starlette's ``AuthenticationMiddleware`` calls it for every request; it reads ``Authorization``
  (Basic against the htpasswd file or a static token; Bearer: a token this proxy issued, or a static token).
- ``tokens``: the proxy's own token service (the Bearer realm clients are sent to), issuing short-lived signed
  tokens as Distribution's token spec describes, so docker, containerd, podman and skopeo all log in as usual.
- ``rules``: who may pull each (registry, repository): anonymous, any authenticated client, or named users and
  groups; checked where a request's target is resolved.
"""
