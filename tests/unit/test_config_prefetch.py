"""``[[prefetch]]`` tables: defaults, errors named by key, and the config's reference check agreeing with warm's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proxy.config import ConfigError, PrefetchSettings, image_key, load
from proxy.warm.references import InvalidReference, parse_reference

GHCR = '[[upstreams]]\nregistry = "docker.io"\n\n[[upstreams]]\nregistry = "ghcr.io"\nurl = "https://ghcr.io"\n'


def write(tmp_path: Path, text: str, upstreams: str = GHCR) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"{upstreams}\n{text}\n")
    return path


def test_entries_with_defaults_and_every_key(tmp_path: Path) -> None:
    settings = load(
        write(
            tmp_path,
            '[[prefetch]]\nimage = "hashicorp/vault:1.15"\n\n'
            '[[prefetch]]\nimage = "ghcr.io/org/app:2"\nplatforms = ["linux/amd64", " linux/arm64/v8"]\n'
            'pin = true\nrefresh = "30m"\n\n'
            '[[prefetch]]\nimage = "alpine"\nrefresh = 0\n',
        ),
        environ={},
    )
    assert settings.prefetch == (
        PrefetchSettings("hashicorp/vault:1.15", (), pin=False, refresh=6 * 3600.0),
        PrefetchSettings("ghcr.io/org/app:2", ("linux/amd64", "linux/arm64/v8"), pin=True, refresh=1800.0),
        PrefetchSettings("alpine", (), pin=False, refresh=0.0),
    )


def test_no_prefetch_tables(tmp_path: Path) -> None:
    assert load(write(tmp_path, ""), environ={}).prefetch == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[prefetch]\nimage = "alpine"', "prefetch: expected [[prefetch]] tables"),
        ("[[prefetch]]\npin = true", "prefetch[0].image: required"),
        ('[[prefetch]]\nimage = "Alpine:3"', "prefetch[0].image: 'Alpine:3': 'library/Alpine' is not a valid"),
        ('[[prefetch]]\nimage = "alpine:bad tag"', "prefetch[0].image: 'alpine:bad tag': invalid tag"),
        ('[[prefetch]]\nimage = "https://x.io/a"', "prefetch[0].image: not an image reference"),
        ('[[prefetch]]\nimage = "quay.io/org/app:1"', "no [[upstreams]] entry for quay.io"),
        ('[[prefetch]]\nimage = "alpine"\nplatforms = ["linux"]', "prefetch[0].platforms[0]: expected os/arch"),
        ('[[prefetch]]\nimage = "alpine"\nplatforms = "linux/amd64"', "prefetch[0].platforms: expected a list"),
        ('[[prefetch]]\nimage = "alpine"\nrefresh = "5s"', "prefetch[0].refresh: must be 0 (only at start-up) or"),
        ('[[prefetch]]\nimage = "alpine"\nrefresh = "soon"', "prefetch[0].refresh: expected a duration"),
        ('[[prefetch]]\nimage = "alpine"\npin = "yes"', "prefetch[0].pin: expected bool"),
        ('[[prefetch]]\nimage = "alpine"\ntag = "1"', "prefetch[0].tag: unknown key"),
        (
            '[[prefetch]]\nimage = "alpine"\n\n[[prefetch]]\nimage = "docker.io/library/alpine:latest"',
            "prefetch[1].image: 'docker.io/library/alpine:latest' is the same image as prefetch[0]",
        ),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(write(tmp_path, text), environ={})
    assert message in str(raised.value)


@pytest.mark.parametrize(
    "text",
    [
        "alpine", "alpine:3.20", "library/alpine", "hashicorp/vault:1.15", "docker.io/alpine", "index.docker.io/a/b",
        "ghcr.io/org/app:1", "localhost:5000/app", "localhost/app:1", "Registry.Example/app", "REG/app",
        "alpine@sha256:" + "a" * 64, "alpine:3@sha256:" + "b" * 64, "host:5000/a/b/c:v1.2-rc_3",
        # refused
        "", "  ", "Alpine", "alpine:", "alpine:-x", "alpine@sha256:abc", "https://ghcr.io/a", "a//b", "-a/b",
        "reg_istry.io/app", "alpine:" + "x" * 129, "docker.io/UPPER/app",
    ],
)  # fmt: skip
def test_the_config_reads_references_as_warm_does(text: str) -> None:
    try:
        parsed = parse_reference(text)
    except InvalidReference:
        with pytest.raises(ValueError):
            image_key(text)
        return
    assert image_key(text) == (parsed.registry, parsed.repository, parsed.reference)


def test_serve_refuses_a_bad_entry_in_one_line(tmp_path: Path) -> None:
    config = write(tmp_path, '[[prefetch]]\nimage = "quay.io/org/app:1"')
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"registry-proxy: config error: {config}: prefetch[0].image: 'quay.io/org/app:1' is not served by this proxy "
        "(no [[upstreams]] entry for quay.io)"
    ]
