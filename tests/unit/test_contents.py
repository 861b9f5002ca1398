from __future__ import annotations

import json

from storage.contents import CONFIG, LAYER, MANIFEST, contents_of, platform_of_config
from storage.digest import Digest

A, B, C = (Digest.of(text.encode()) for text in ("a", "b", "c"))


def test_image_manifest_refers_to_config_and_layers() -> None:
    body = json.dumps(
        {
            "schemaVersion": 2,
            "config": {"digest": str(A), "size": 10},
            "layers": [{"digest": str(B), "size": 20}, {"digest": str(C), "size": 30}],
        }
    ).encode()
    contents = contents_of(body)
    assert [(r.digest, r.kind, r.size) for r in contents.references] == [
        (A, CONFIG, 10),
        (B, LAYER, 20),
        (C, LAYER, 30),
    ]
    assert contents.platforms == ()


def test_index_lists_children_and_platforms_without_attestations() -> None:
    body = json.dumps(
        {
            "manifests": [
                {"digest": str(A), "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
                {"digest": str(B), "size": 2, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"digest": str(C), "size": 3, "platform": {"os": "unknown", "architecture": "unknown"}},
            ]
        }
    ).encode()
    contents = contents_of(body)
    assert [(r.digest, r.kind, r.platform) for r in contents.references] == [
        (A, MANIFEST, "linux/amd64"),
        (B, MANIFEST, "linux/arm64/v8"),
        (C, MANIFEST, ""),
    ]
    assert contents.platforms == ("linux/amd64", "linux/arm64/v8")


def test_garbage_refers_to_nothing() -> None:
    for body in (b"", b"not json", b"[1, 2]", b'{"layers": "x"}', b'{"layers": [{"digest": "sha256:short"}]}'):
        assert contents_of(body).references == ()
    bad_size = json.dumps({"layers": [{"digest": str(A), "size": -5}, {"digest": str(B), "size": True}]}).encode()
    assert [r.size for r in contents_of(bad_size).references] == [0, 0]


def test_platform_of_config() -> None:
    assert platform_of_config(b'{"os": "linux", "architecture": "arm", "variant": "v7"}') == "linux/arm/v7"
    assert platform_of_config(b'{"architecture": "amd64"}') == ""
    assert platform_of_config(b"\xff") == ""
