"""``registry-proxy ls``: what the proxy cached, as rows, from the inventory."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.cli import main
from proxy.commands.ls import list_images
from proxy.config import Settings, StorageSettings, UpstreamSettings
from storage.paths import INVENTORY
from tests.unit.fakes import (
    FAKE_REDIRECT_HOSTS,
    FAKE_TOKEN_REALMS,
    OCI_INDEX,
    OCI_MANIFEST,
    REGISTRY,
    FakeRegistry,
    sha256,
)


def settings_for(root: Path) -> Settings:
    upstream = UpstreamSettings(
        registry="docker.io", url=REGISTRY, redirect_hosts=FAKE_REDIRECT_HOSTS, token_realms=FAKE_TOKEN_REALMS
    )
    return Settings(storage=StorageSettings(root=root), upstreams=(upstream,))


def pull(settings: Settings, fake: FakeRegistry, *paths: str) -> None:
    """Run the proxy, make the requests, stop it (which writes the inventory's last batch)."""
    with TestClient(create_app(settings, transport=httpx.MockTransport(fake))) as client:
        for path in paths:
            assert client.get(path, headers={"Accept": f"{OCI_INDEX}, {OCI_MANIFEST}"}).status_code == 200, path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\nroot = "{tmp_path / "cache"}"\n')
    return path


def image_paths(fake: FakeRegistry) -> list[str]:
    """Pull alpine:3.20 (twice) and its config, and the index "multi"."""
    manifest = json.loads(fake.manifests[("library/alpine", "3.20")][1])
    config = manifest["config"]["digest"]
    return [
        "/v2/library/alpine/manifests/3.20",
        "/v2/library/alpine/manifests/3.20",
        f"/v2/library/alpine/blobs/{config}",
        "/v2/library/alpine/manifests/multi",
    ]


def test_ls_json_lists_every_pulled_image_with_its_digest(
    tmp_path: Path, fake: FakeRegistry, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pull(settings_for(tmp_path / "cache"), fake, *image_paths(fake))
    assert main(["ls", "--config", str(config), "--json"]) == 0
    rows = {row["tag"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"3.20", "multi"}
    alpine = rows["3.20"]
    assert alpine["digest"] == sha256(fake.manifests[("library/alpine", "3.20")][1])
    assert (alpine["registry"], alpine["repository"], alpine["media_type"]) == (
        "docker.io",
        "library/alpine",
        OCI_MANIFEST,
    )
    assert alpine["platforms"] == ["linux/amd64"]  # from the cached config
    assert alpine["pull_count"] == 2 and alpine["pinned"] is False
    assert alpine["size"] == len(fake.manifests[("library/alpine", "3.20")][1]) + 37 + 11000
    assert alpine["fetched_at"].endswith("Z") and alpine["last_pulled"].endswith("Z")
    assert rows["multi"]["digest"] == sha256(fake.manifests[("library/alpine", "multi")][1])
    assert rows["multi"]["media_type"] == OCI_INDEX


def test_ls_markdown_renders_a_table(
    tmp_path: Path, fake: FakeRegistry, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pull(settings_for(tmp_path / "cache"), fake, *image_paths(fake))
    assert main(["ls", "--config", str(config), "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| Image | Digest | Type | Platforms |")
    assert lines[1].replace(" ", "") == "|" + "---|" * lines[0].count(" | ") + "---|"
    digest = sha256(fake.manifests[("library/alpine", "3.20")][1])
    row = next(line for line in lines if "library/alpine:3.20" in line)
    assert row.startswith(f"| `docker.io/library/alpine:3.20` | `{digest}` | OCI manifest | linux/amd64 |")
    assert len(lines) == 4 and all(line.startswith("| ") and line.endswith(" |") for line in lines)


def test_ls_text_table_and_an_empty_cache(
    tmp_path: Path, fake: FakeRegistry, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ls", "--config", str(config)]) == 0
    assert "no cached images" in capsys.readouterr().err
    pull(settings_for(tmp_path / "cache"), fake, *image_paths(fake))
    assert main(["ls", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["REGISTRY", "REPOSITORY", "TAG", "DIGEST"]
    assert [line.split()[2] for line in lines[1:]] == ["3.20", "multi"]


async def test_ls_builds_the_inventory_of_a_cache_that_has_none(tmp_path: Path, fake: FakeRegistry) -> None:
    settings = settings_for(tmp_path / "cache")
    pull(settings, fake, *image_paths(fake))
    for path in (tmp_path / "cache").iterdir():
        if path.name.startswith(INVENTORY):
            path.unlink()
    rows = await list_images(settings)
    assert [(row.image.tag, row.image.pull_count) for row in rows] == [("3.20", 0), ("multi", 0)]
    assert rows[0].platforms == ("linux/amd64",)


async def test_ls_outdated_marks_tags_that_moved_upstream(tmp_path: Path, fake: FakeRegistry) -> None:
    settings = settings_for(tmp_path / "cache")
    pull(settings, fake, *image_paths(fake))
    moved = b'{"schemaVersion":2,"mediaType":"' + OCI_MANIFEST.encode() + b'","config":{},"layers":[]}'
    fake.add_manifest("library/alpine", "3.20", OCI_MANIFEST, moved)
    rows = {
        row.image.tag: row for row in await list_images(settings, outdated=True, transport=httpx.MockTransport(fake))
    }
    assert rows["3.20"].outdated is True and rows["3.20"].upstream_digest == sha256(moved)
    assert rows["multi"].outdated is False
    assert fake.count("HEAD", "/manifests/") == 2 and fake.count("GET", "/manifests/3.20") == 1
