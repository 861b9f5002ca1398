"""Property tests (hypothesis): whatever a client puts in a path or header, the app answers below 500 with a registry
error envelope, and nothing is written outside the cache root; the validators and path builders in ``storage`` never
admit a path that leaves the root; ``Digest.parse`` and ``parse_range`` accept exactly what they should.

The app runs in-process (Starlette TestClient, lifespan included) against the in-memory FakeRegistry. One client
serves all examples of a module: building one per example would cost far more than the requests themselves.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, reject, settings, strategies as st
from starlette.testclient import TestClient

from proxy.app import create_app
from proxy.config import ServerSettings, Settings, StorageSettings, UpstreamSettings
from proxy.errors import RegistryError
from proxy.ranges import parse_range
from storage.digest import Digest, InvalidDigest
from storage.paths import EVICT_LOCK, INVENTORY, LOCKS, blob_path, manifest_link_path, tag_path, tags_dir
from storage.references import is_registry, is_repository, is_tag
from tests.unit.fakes import FAKE_REDIRECT_HOSTS, FAKE_TOKEN_REALMS, OCI_MANIFEST, REGISTRY, FakeRegistry

# Requests go through the app's whole stack; a few milliseconds each is normal, hence no deadline. No example
# database and derandomized: every run tries the same examples, so CI cannot pass or fail by luck (a new
# finding comes from changing the strategies or max_examples, on purpose).
REQUESTS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
PURE = settings(max_examples=300, deadline=None, database=None, derandomize=True)

# The characters that break paths, plus anything unicode (no surrogates: a URL carries UTF-8).
HOSTILE_CHARS = st.one_of(
    st.sampled_from(list("/.%\x00\\:?#;@~ \t\r\n") + ["..", "%2e", "%2f", "%00", "\u202e", "é", "😀"]),
    st.characters(codec="utf-8"),
)
HOSTILE_TEXT = st.lists(HOSTILE_CHARS, max_size=40).map("".join)

# The grammars from the distribution and image specs (PROTOCOL.md), written out here rather than imported, so
# that a change to the code's grammar is checked against the spec's.
COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = rf"{COMPONENT}(?:/{COMPONENT})*"
TAG_RE = r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
REGISTRY_RE = r"(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])(?:\.(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9]))*(?::[0-9]{1,5})?"
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")

# Built from parts rather than with st.from_regex, which is an order of magnitude slower here; the tests check
# each value against the regular expressions above all the same.
LOWER_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"
_alnum = st.text(LOWER_ALNUM, min_size=1, max_size=12)
_component = st.tuples(
    _alnum, st.lists(st.tuples(st.sampled_from([".", "_", "__", "-", "---"]), _alnum), max_size=3)
).map(lambda t: t[0] + "".join(sep + part for sep, part in t[1]))
valid_repositories = st.lists(_component, min_size=1, max_size=8).map("/".join).filter(lambda s: len(s) <= 255)
valid_tags = st.tuples(st.sampled_from(LOWER_ALNUM + "ABCXYZ_"), st.text(LOWER_ALNUM + "ABCXYZ._-", max_size=127)).map(
    "".join
)
_label = st.tuples(_alnum, st.lists(st.tuples(st.sampled_from(["-", "--"]), _alnum), max_size=2)).map(
    lambda t: t[0] + "".join(sep + part for sep, part in t[1])
)
valid_registries = st.tuples(
    st.lists(_label, min_size=1, max_size=4).map(".".join),
    st.one_of(st.just(""), st.integers(0, 99999).map(lambda port: f":{port}")),
).map("".join)
valid_digests = st.one_of(
    st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: f"sha256:{h}"),
    st.text("0123456789abcdef", min_size=128, max_size=128).map(lambda h: f"sha512:{h}"),
)
path_pieces = st.sampled_from(["..", ".", "", "library", "alpine", "%2e%2e", "\x00", "a\\b", "C:", "~", "_tags"])
names = st.one_of(
    HOSTILE_TEXT,
    valid_repositories,
    st.lists(st.one_of(path_pieces, HOSTILE_TEXT), max_size=8).map("/".join),
    st.integers(1, 300).map(lambda n: "library/" + "a" * n),
    st.integers(1, 300).map(lambda n: "a" * n),
)


@dataclass
class Proxy:
    client: TestClient
    tmp: Path
    sentinel: bytes
    repository: str
    tag: str
    manifest_digest: str
    blob_digest: str

    @property
    def root(self) -> Path:
        return self.tmp / "cache"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    """The app with its cache root in a directory of its own, next to a sentinel file that must never change."""
    tmp = tmp_path_factory.mktemp("properties")
    sentinel = b"sentinel-" + secrets.token_hex(16).encode()
    (tmp / "sentinel.txt").write_bytes(sentinel)
    fake = FakeRegistry()
    layer = fake.add_blob(b"layer-bytes" * 100)
    config = fake.add_blob(b'{"architecture":"amd64","os":"linux"}')
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 37},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 1100}],
        }
    ).encode()
    digest = fake.add_manifest("library/alpine", "3.20", OCI_MANIFEST, manifest)
    settings_ = Settings(
        server=ServerSettings(),
        storage=StorageSettings(root=tmp / "cache"),
        upstreams=(
            UpstreamSettings(
                registry="docker.io", url=REGISTRY, redirect_hosts=FAKE_REDIRECT_HOSTS, token_realms=FAKE_TOKEN_REALMS
            ),
        ),
    )
    app = create_app(settings_, transport=httpx.MockTransport(fake))
    with TestClient(app, raise_server_exceptions=False) as client:
        # Warm the cache, so that requests also meet stored manifests, tags and blobs.
        assert client.get("/v2/library/alpine/manifests/3.20").status_code == 200
        assert client.get(f"/v2/library/alpine/blobs/{layer}").status_code == 200
        yield Proxy(client, tmp, sentinel, "library/alpine", "3.20", digest, layer)


def encode(text: str) -> str:
    """Percent-encode everything but ``/`` and ASCII letters and digits (``.`` too, which quote() leaves alone): the
    app then sees ``text`` itself, ``..`` included, which httpx would otherwise normalise away."""
    return "".join(
        c if c == "/" or (c.isascii() and c.isalnum()) else "".join(f"%{b:02X}" for b in c.encode()) for c in text
    )


def check_reply(proxy: Proxy, method: str, response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.content[:300])
    if 400 <= response.status_code < 500:
        assert response.headers["content-type"].startswith("application/json")
        if method != "HEAD":
            errors = response.json()["errors"]
            assert errors and all({"code", "message", "detail"} <= set(e) for e in errors), errors
    assert proxy.sentinel not in response.content
    check_contained(proxy)


def check_contained(proxy: Proxy) -> None:
    assert sorted(os.listdir(proxy.tmp)) == ["cache", "sentinel.txt"]
    assert (proxy.tmp / "sentinel.txt").read_bytes() == proxy.sentinel
    inventory = {INVENTORY, f"{INVENTORY}-wal", f"{INVENTORY}-shm", EVICT_LOCK}
    assert set(os.listdir(proxy.root)) <= {"blobs", "repositories", LOCKS, *inventory}
    # Fetch locks are removed once released: only their shard directories stay.
    assert not [p for p in (proxy.root / LOCKS).rglob("*") if p.is_file()]


# -- the app, in-process ---------------------------------------------------------------------------------------------


@REQUESTS
@given(
    name=st.one_of(names, st.sampled_from(["library/alpine", "alpine"])),
    reference=st.one_of(HOSTILE_TEXT, valid_tags, valid_digests, st.just("3.20")),
    method=st.sampled_from(["GET", "HEAD"]),
)
def test_manifest_requests(proxy: Proxy, name: str, reference: str, method: str) -> None:
    response = proxy.client.request(method, f"/v2/{encode(name)}/manifests/{encode(reference)}")
    check_reply(proxy, method, response)


@REQUESTS
@given(
    name=st.one_of(names, st.just("library/alpine")),
    digest=st.one_of(HOSTILE_TEXT, valid_digests, st.sampled_from(["sha256:", "md5:00", "sha256:" + "A" * 64])),
    method=st.sampled_from(["GET", "HEAD"]),
    byte_range=st.one_of(st.none(), HOSTILE_TEXT.filter(lambda s: s.isascii() and "\x00" not in s)),
)
def test_blob_requests(proxy: Proxy, name: str, digest: str, method: str, byte_range: str | None) -> None:
    headers = {"Range": byte_range} if byte_range is not None else {}
    response = proxy.client.request(method, f"/v2/{encode(name)}/blobs/{encode(digest)}", headers=headers)
    check_reply(proxy, method, response)


@REQUESTS
@given(
    name=st.one_of(names, st.just("library/alpine")),
    n=st.one_of(st.none(), HOSTILE_TEXT, st.integers(-(10**20), 10**20).map(str)),
    last=st.one_of(st.none(), HOSTILE_TEXT),
)
def test_tag_list_requests(proxy: Proxy, name: str, n: str | None, last: str | None) -> None:
    params = {k: v for k, v in (("n", n), ("last", last)) if v is not None}
    response = proxy.client.get(f"/v2/{encode(name)}/tags/list", params=params)
    check_reply(proxy, "GET", response)


@REQUESTS
@given(
    path=st.one_of(HOSTILE_TEXT, st.lists(st.one_of(path_pieces, HOSTILE_TEXT), max_size=10).map("/".join)),
    prefix=st.sampled_from(["/v2/", "/", "//v2/", "/v2"]),
    method=st.sampled_from(["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "TRACE"]),
)
def test_any_path(proxy: Proxy, path: str, prefix: str, method: str) -> None:
    try:
        response = proxy.client.request(method, prefix + encode(path))
    except httpx.InvalidURL:
        reject()  # the test's own client refuses to send it (e.g. "///.." reads as an authority)
    check_reply(proxy, method, response)
    if method not in ("GET", "HEAD") and (prefix + path).startswith("/v2/"):
        assert response.status_code == 405
        assert response.json()["errors"][0]["code"] == "UNSUPPORTED"


@REQUESTS
@given(
    accept=st.binary(max_size=200).filter(lambda b: not set(b) & set(b"\r\n\x00")),
    if_none_match=st.binary(max_size=100).filter(lambda b: not set(b) & set(b"\r\n\x00")),
    by_digest=st.booleans(),
)
def test_junk_negotiation_headers(proxy: Proxy, accept: bytes, if_none_match: bytes, by_digest: bool) -> None:
    reference = proxy.manifest_digest if by_digest else proxy.tag
    headers = {"Accept": accept, "If-None-Match": if_none_match}
    response = proxy.client.get(f"/v2/{proxy.repository}/manifests/{reference}", headers=headers)
    check_reply(proxy, "GET", response)


def test_cache_holds_nothing_unexpected(proxy: Proxy) -> None:
    """After all the above (module order): no symlink, nothing resolving outside the root, the content intact."""
    root = os.path.realpath(proxy.root)
    for directory, dirs, files in os.walk(proxy.root):
        for entry in dirs + files:
            path = os.path.join(directory, entry)
            assert not os.path.islink(path), path
            assert os.path.realpath(path).startswith(root + os.sep), path
    check_contained(proxy)
    blob = proxy.client.get(f"/v2/{proxy.repository}/blobs/{proxy.blob_digest}")
    assert str(Digest.of(blob.content)) == proxy.blob_digest


# Regressions found by the properties above, kept as plain examples.


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("length", [248, 255])
def test_long_one_segment_name_is_a_client_error(proxy: Proxy, method: str, length: int) -> None:
    response = proxy.client.request(method, f"/v2/{'a' * length}/manifests/latest")
    assert 400 <= response.status_code < 500


def test_unicode_digit_page_size_is_a_client_error(proxy: Proxy) -> None:
    response = proxy.client.get(f"/v2/{proxy.repository}/tags/list?n=%C2%B2")
    assert response.status_code == 400


@pytest.mark.parametrize("accept", [b"\x80", b"application/vnd.oci.image.manifest.v1+json\xe9"])
def test_non_ascii_accept_is_not_a_server_error(proxy: Proxy, accept: bytes) -> None:
    # Found by test_junk_negotiation_headers: these reached the upstream request, where httpx raised
    # UnicodeEncodeError (a 500). The cached tag's media type is not in this Accept, so the upstream is asked.
    response = proxy.client.get(f"/v2/{proxy.repository}/manifests/{proxy.tag}", headers={"Accept": accept})
    assert response.status_code < 500


# Starlette's {path:path} is ".*", which does not match a decoded newline: no route matches, and the 404 must
# still become 405 for a write.
@pytest.mark.parametrize("path", ["/v2/%0a/", "/v2/library/alpine%0a/manifests/3.20"])
def test_write_with_newline_in_path_is_unsupported(proxy: Proxy, path: str) -> None:
    response = proxy.client.put(path, content=b"{}")
    assert response.status_code == 405


# -- storage: validators and paths -----------------------------------------------------------------------------------


def assert_under_root(path: PurePosixPath) -> None:
    root = "/cache-root"
    assert not path.is_absolute()
    assert ".." not in path.parts
    joined = os.path.join(root, str(path))
    # normpath changes nothing: no "." or ".." or empty component for it to resolve.
    assert os.path.normpath(joined) == joined
    assert joined.startswith(root + "/")
    assert "\x00" not in str(path) and "\\" not in str(path)


@PURE
@given(registry=valid_registries, repository=valid_repositories, tag=valid_tags, digest=valid_digests)
def test_validated_values_make_paths_under_the_root(registry: str, repository: str, tag: str, digest: str) -> None:
    # The generators make spec-valid values; the code must accept every one of them.
    assert re.fullmatch(REGISTRY_RE, registry) and re.fullmatch(REPOSITORY_RE, repository) and re.fullmatch(TAG_RE, tag)
    assert is_registry(registry) and is_repository(repository) and is_tag(tag)
    parsed = Digest.parse(digest)
    assert_under_root(blob_path(parsed))
    assert_under_root(manifest_link_path(registry, repository, parsed))
    assert_under_root(tags_dir(registry, repository))
    assert_under_root(tag_path(registry, repository, tag))


@PURE
@given(
    registry=st.one_of(HOSTILE_TEXT, valid_registries),
    repository=st.one_of(names, valid_repositories),
    tag=st.one_of(HOSTILE_TEXT, valid_tags, st.sampled_from(["..", ".", "_", "a" * 128, "a" * 129])),
)
def test_any_text_is_rejected_or_makes_a_path_under_the_root(registry: str, repository: str, tag: str) -> None:
    if is_registry(registry) and is_repository(repository) and is_tag(tag):
        assert_under_root(tag_path(registry, repository, tag))
    else:
        with pytest.raises(ValueError):
            tag_path(registry, repository, tag)


@PURE
@given(text=st.one_of(names, HOSTILE_TEXT, valid_repositories))
def test_accepted_repository_names_cannot_escape(text: str) -> None:
    if is_repository(text):
        assert len(text) <= 255
        assert re.fullmatch(REPOSITORY_RE, text)
        parts = text.split("/")
        assert all(part and part not in (".", "..") and not part.startswith(("_", ".", "-")) for part in parts)


@PURE
@given(text=st.one_of(HOSTILE_TEXT, valid_tags, st.text("a.-_", max_size=130)))
def test_accepted_tags_are_single_safe_file_names(text: str) -> None:
    if is_tag(text):
        assert re.fullmatch(TAG_RE, text)
        assert "/" not in text and text not in (".", "..") and not text.startswith((".", "-"))
        assert len(text) <= 128


# -- Digest.parse --------------------------------------------------------------------------------------------------


def _mutations(digest: str) -> st.SearchStrategy[str]:
    at = st.integers(0, len(digest))
    return st.one_of(
        st.tuples(at, st.characters(codec="utf-8")).map(lambda p: digest[: p[0]] + p[1] + digest[p[0] + 1 :]),
        st.tuples(at, st.characters(codec="utf-8")).map(lambda p: digest[: p[0]] + p[1] + digest[p[0] :]),
        at.map(lambda i: digest[:i] + digest[i + 1 :]),
        st.sampled_from([digest.upper(), digest + "\n", " " + digest, digest.replace(":", "::")]),
        st.sampled_from(["md5", "sha1", "sha384", "blake3", "SHA256", "sha256+b64"]).map(
            lambda alg: alg + digest[digest.index(":") :]
        ),
    )


@PURE
@given(value=st.one_of(HOSTILE_TEXT, valid_digests, valid_digests.flatmap(_mutations)))
def test_digest_parse_accepts_exactly_sha256_and_sha512_lower_hex(value: str) -> None:
    expected = DIGEST_RE.fullmatch(value) is not None
    try:
        parsed = Digest.parse(value)
    except InvalidDigest:
        assert not expected, value
    else:
        assert expected, value
        assert str(parsed) == value
        assert_under_root(blob_path(parsed))


# -- parse_range ---------------------------------------------------------------------------------------------------

numbers = st.one_of(st.integers(0, 2**70).map(str), st.just(""), st.sampled_from(["-1", "1e3", "0x1", " 1", "١"]))
range_headers = st.one_of(
    HOSTILE_TEXT,
    st.tuples(numbers, numbers).map(lambda p: f"bytes={p[0]}-{p[1]}"),
    st.lists(st.tuples(numbers, numbers), min_size=1, max_size=4).map(
        lambda ps: "bytes=" + ",".join(f"{a}-{b}" for a, b in ps)
    ),
    st.tuples(st.sampled_from(["bytes", "Bytes", "items", "", "bytes "]), numbers, numbers).map(
        lambda p: f"{p[0]}={p[1]}-{p[2]}"
    ),
)


@PURE
@given(header=st.one_of(st.none(), range_headers), size=st.one_of(st.integers(0, 10), st.integers(0, 2**63)))
def test_parse_range_stays_inside_the_blob(header: str | None, size: int) -> None:
    try:
        result = parse_range(header, size)
    except RegistryError as exc:
        assert exc.status == 416
        assert header is not None
        return
    if header is None:
        assert result is None
    else:
        assert result is not None
        start, end = result
        assert 0 <= start < end <= size


@PURE
@given(first=st.integers(0, 2**62), length=st.integers(1, 2**62), size=st.integers(1, 2**62))
def test_parse_range_serves_a_satisfiable_range(first: int, length: int, size: int) -> None:
    assume(first < size)
    last = first + length - 1
    assert parse_range(f"bytes={first}-{last}", size) == (first, min(last + 1, size))
    assert parse_range(f"bytes={first}-", size) == (first, size)
    assert parse_range(f"bytes=-{length}", size) == (max(0, size - length), size)
