"""The ``max_concurrent_requests`` key of an upstream (issue 8, item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, UpstreamSettings, load


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_the_default_is_httpx_s_own_pool_size(tmp_path: Path) -> None:
    settings = load(write(tmp_path, "[[upstreams]]\n"), environ={})
    assert settings.upstreams[0].max_concurrent_requests == UpstreamSettings().max_concurrent_requests == 100


def test_each_upstream_has_its_own(tmp_path: Path) -> None:
    text = """
[[upstreams]]
max_concurrent_requests = 8

[[upstreams]]
registry = "ghcr.io"
url = "https://ghcr.io"
"""
    settings = load(write(tmp_path, text), environ={})
    assert [u.max_concurrent_requests for u in settings.upstreams] == [8, 100]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", "upstreams[0].max_concurrent_requests: must be between 1 and 10000, got 0"),
        ("10001", "upstreams[0].max_concurrent_requests: must be between 1 and 10000, got 10001"),
        ('"8"', "upstreams[0].max_concurrent_requests: expected int, got str"),
        ("true", "upstreams[0].max_concurrent_requests: expected int, got bool"),
        ("8.5", "upstreams[0].max_concurrent_requests: expected int, got float"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, f"[[upstreams]]\nmax_concurrent_requests = {value}\n"), environ={})
    assert str(info.value).endswith(expected)
