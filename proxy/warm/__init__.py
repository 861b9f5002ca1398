"""``registry-proxy warm``: pull images into the cache ahead of the CI jobs that need them.

- ``references``, ``platforms``: image references and platforms, read the way Docker reads them.
- ``cifiles``: the image references in CI files (GitHub Actions, GitLab CI, compose, Dockerfiles, Kubernetes);
  ``variables``: what of them a file's own defaults resolve, and what is left unresolved.
- ``targets``: what the command line and those files ask for, deduplicated; what is skipped and why.
- ``client``: walks one image through a proxy's HTTP API (manifests, then blobs), so that single flight, the
  cache's verification and its budget all hold exactly as for any other client.
- ``inprocess``: a stopped cache, served on a loopback port of this process while it is warmed.
- ``display``, ``command``: the progress display, the summary, the subcommand.

Nothing here reads the cache's files: every byte goes through the proxy, as a pull would.
"""
