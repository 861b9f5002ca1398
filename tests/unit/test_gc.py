"""``registry-proxy gc``: partial files left behind, unreferenced blobs, blobs past the budget; --dry-run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path, PurePosixPath

import httpx
import pytest
from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.cli import main
from proxy.config import Settings, StorageSettings, UpstreamSettings
from storage.digest import Digest
from storage.files import FileReader
from storage.paths import blob_path
from tests.unit.fakes import FAKE_REDIRECT_HOSTS, FAKE_TOKEN_REALMS, REGISTRY, FakeRegistry


def cache_with_an_image(root: Path, fake: FakeRegistry, *, layer_first: bool = False) -> list[str]:
    """Pull alpine:3.20 and its blobs through the proxy (the layer first, if asked); its config and layer digests."""
    upstream = UpstreamSettings(
        registry="docker.io", url=REGISTRY, redirect_hosts=FAKE_REDIRECT_HOSTS, token_realms=FAKE_TOKEN_REALMS
    )
    settings = Settings(storage=StorageSettings(root=root), upstreams=(upstream,))
    manifest = json.loads(fake.manifests[("library/alpine", "3.20")][1])
    blobs = [manifest["config"]["digest"], manifest["layers"][0]["digest"]]
    paths = ["/v2/library/alpine/manifests/3.20"] + [f"/v2/library/alpine/blobs/{digest}" for digest in blobs]
    with TestClient(create_app(settings, transport=httpx.MockTransport(fake))) as client:
        for path in [paths[2], *paths[:2]] if layer_first else paths:
            assert client.get(path).status_code == 200
    return blobs


def put_file(root: Path, relative: PurePosixPath, data: bytes, age: float = 0.0) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if age:
        os.utime(path, (time.time() - age, time.time() - age))
    return path


def write_config(tmp_path: Path, storage: str = "") -> Path:
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\nroot = "{tmp_path / "cache"}"\n{storage}\n')
    return config


def test_gc_removes_old_partials_and_unreferenced_blobs_and_nothing_else(
    tmp_path: Path, fake: FakeRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "cache"
    referenced = cache_with_an_image(root, fake)
    orphan = Digest.of(b"a layer no cached manifest refers to")
    put_file(root, blob_path(orphan), b"a layer no cached manifest refers to", age=3 * 86400)
    old_partial = put_file(root, PurePosixPath("blobs/sha256/ab/abcd.0123.partial"), b"x" * 10, age=2 * 3600)
    young_partial = put_file(root, PurePosixPath("blobs/sha256/cd/cdef.4567.partial"), b"y" * 10)
    config = write_config(tmp_path)

    assert main(["gc", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove unreferenced: {orphan} (36 bytes)" in out
    assert "would remove partial: blobs/sha256/ab/abcd.0123.partial (10 bytes)" in out
    assert out.splitlines()[-1] == "gc: would remove 2 files, 46 bytes (0.0 MiB)"
    assert (root / blob_path(orphan)).exists() and old_partial.exists()

    assert main(["gc", "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "gc: removed 2 files, 46 bytes (0.0 MiB)"
    assert not (root / blob_path(orphan)).exists() and not old_partial.exists()
    assert young_partial.exists()
    assert all((root / blob_path(Digest.parse(digest))).exists() for digest in referenced)


def test_gc_grace_keeps_recent_orphans_and_leases_keep_blobs_being_read(
    tmp_path: Path, fake: FakeRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "cache"
    cache_with_an_image(root, fake)
    recent, read = Digest.of(b"recent orphan"), Digest.of(b"orphan being read")
    put_file(root, blob_path(recent), b"recent orphan")
    put_file(root, blob_path(read), b"orphan being read", age=3 * 86400)
    reader = FileReader.open(root / blob_path(read))
    try:
        assert main(["gc", "--config", str(write_config(tmp_path))]) == 0
        out = capsys.readouterr().out
    finally:
        # Closed without awaiting: FileReader.close only closes the descriptor.
        os.close(reader.fileno() or -1)
    assert out.splitlines()[-1] == "gc: removed 0 files, 0 bytes (0.0 MiB); 1 blobs being read were kept"
    assert (root / blob_path(recent)).exists() and (root / blob_path(read)).exists()
    assert main(["gc", "--config", str(write_config(tmp_path)), "--grace", "0s"]) == 0
    assert not (root / blob_path(recent)).exists() and not (root / blob_path(read)).exists()


def test_gc_evicts_least_recently_used_blobs_past_the_budget(
    tmp_path: Path, fake: FakeRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "cache"
    config_digest, layer = cache_with_an_image(root, fake, layer_first=True)
    # The layer (11000 bytes) is the least recently used: with a budget of 5000 bytes it is what goes, and enough.
    config = write_config(tmp_path, 'max_size = 5000\nlow_watermark = "90%"')
    assert main(["gc", "--config", str(config), "--dry-run"]) == 0
    assert f"would remove over budget: {layer} (11000 bytes)" in capsys.readouterr().out
    assert (root / blob_path(Digest.parse(layer))).exists()
    assert main(["gc", "--config", str(config)]) == 0
    assert f"removed over budget: {layer} (11000 bytes)" in capsys.readouterr().out
    assert not (root / blob_path(Digest.parse(layer))).exists()
    assert (root / blob_path(Digest.parse(config_digest))).exists()


def test_gc_without_a_cache_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gc", "--config", str(write_config(tmp_path))]) == 1
    assert "no cache at" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["gc", "--config", str(write_config(tmp_path)), "--grace", "soon"])
    assert exit_.value.code == 2
    assert "--grace" in capsys.readouterr().err
