"""Tests that drive real processes: Distribution, skopeo, and the proxy under uvicorn."""
