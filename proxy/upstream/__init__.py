"""Talking to upstream registries: token auth, manifests, blobs, tags (httpx lives here only)."""
