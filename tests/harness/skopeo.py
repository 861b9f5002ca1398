"""skopeo, a real registry client, pulling from the upstream registry or through the proxy."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.harness.oci import sha256_digest

DestFormat = Literal["dir", "oci"]


class SkopeoError(RuntimeError):
    def __init__(self, args: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(args)} exited with {returncode}:\n{stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


def skopeo_path() -> str:
    found = shutil.which("skopeo")
    if found is None:
        raise FileNotFoundError("skopeo is not on PATH")
    return found


def docker_ref(src: str) -> str:
    """``docker://host:port/name:tag``, whether or not ``src`` already has the transport."""
    return src if src.startswith("docker://") else f"docker://{src}"


def skopeo_copy(
    src: str,
    dest_dir: Path,
    *,
    all_images: bool = False,
    creds: str | None = None,
    timeout: float = 300,
    dest_format: DestFormat = "dir",
    cert_dir: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Copy image ``src`` (``host:port/name:tag``, ``docker://`` optional) over plain HTTP into ``dest_dir``.

    ``dir:`` (the default) keeps the manifest bytes as the registry served them, so digests compare with what was
    pushed; ``oci:`` may convert a Docker manifest and so change its digest. ``creds`` is ``user:password``; without
    it skopeo is told to go anonymous, so no credentials from the machine's auth files leak into a test.
    ``cert_dir``: the source is HTTPS, verified against the ``ca.crt`` in that directory.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    tls = ["--src-cert-dir", str(cert_dir)] if cert_dir is not None else ["--src-tls-verify=false"]
    args = [skopeo_path(), "--insecure-policy", "copy", *tls, "--retry-times=0"]
    args += ["--src-creds", creds] if creds else ["--src-no-creds"]
    if all_images:
        args.append("--all")
    args += [docker_ref(src), f"{dest_format}:{dest_dir}"]
    return _run(args, timeout)


def skopeo_inspect_raw(ref: str, *, creds: str | None = None, timeout: float = 60) -> bytes:
    """The manifest bytes that the registry serves for ``ref``, exactly."""
    args = [skopeo_path(), "--insecure-policy", "inspect", "--raw", "--tls-verify=false"]
    args += ["--creds", creds] if creds else ["--no-creds"]
    args.append(docker_ref(ref))
    completed = subprocess.run(args, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    if completed.returncode != 0:
        raise SkopeoError(args, completed.returncode, completed.stderr.decode(errors="replace"))
    return completed.stdout


@dataclass(frozen=True)
class DirLayout:
    """What ``skopeo copy ... dir:PATH`` left: the top manifest, any per-instance manifests (``--all``), blobs."""

    path: Path
    manifest: bytes
    instance_manifests: dict[str, bytes]
    """Digest → bytes of each image manifest of a copied index (only with ``--all``)."""
    blobs: dict[str, Path]
    """Digest → file of every config and layer."""

    @property
    def manifest_digest(self) -> str:
        return sha256_digest(self.manifest)

    def verify_blobs(self) -> None:
        """Raise if any blob's content does not hash to the digest its file is named after."""
        for digest, path in self.blobs.items():
            with path.open("rb") as f:
                actual = f"sha256:{hashlib.file_digest(f, 'sha256').hexdigest()}"
            if actual != digest:
                raise AssertionError(f"{path} holds {actual}, not {digest}")


def read_dir_layout(path: Path) -> DirLayout:
    """Read skopeo's ``dir:`` layout: ``manifest.json``, ``<hex>.manifest.json`` per instance, ``<hex>`` per blob."""
    manifest = (path / "manifest.json").read_bytes()
    instances: dict[str, bytes] = {}
    blobs: dict[str, Path] = {}
    for entry in sorted(path.iterdir()):
        name = entry.name
        if name.endswith(".manifest.json"):
            instances[f"sha256:{name.removesuffix('.manifest.json')}"] = entry.read_bytes()
        elif len(name) == 64 and all(c in "0123456789abcdef" for c in name):
            blobs[f"sha256:{name}"] = entry
    return DirLayout(path, manifest, instances, blobs)


def manifest_media_type(manifest: bytes) -> str | None:
    """The ``mediaType`` a manifest declares about itself, if it does."""
    value = json.loads(manifest).get("mediaType")
    return value if isinstance(value, str) else None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
    )
    if completed.returncode != 0:
        raise SkopeoError(args, completed.returncode, completed.stderr)
    return completed
