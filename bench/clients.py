"""Blob clients for the benchmarks, and many of them at once.

Both clients do their work in C, so that on a 2-core machine the figures measure the server rather than the
client: ``curl`` as real pullers are (Go, containerd), piped into ``openssl dgst`` (the CPU's SHA extensions;
coreutils' sha256sum is 10x slower), and a lean socket reader that hashes with hashlib (which releases the GIL).
"""

from __future__ import annotations

import hashlib
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import urlsplit

__all__ = [
    "ClientName",
    "Crowd",
    "Download",
    "DownloadError",
    "DownloadFunction",
    "curl_download",
    "download_client",
    "download_together",
    "socket_download",
]

ClientName = Literal["curl", "socket"]
DEFAULT_TIMEOUT = 300.0
# Reads into one reused buffer this large: few system calls, no allocation per read.
READ_BUFFER = 1 << 20
MAX_HEAD = 65536


class DownloadError(RuntimeError):
    pass


@dataclass(frozen=True)
class Download:
    seconds: float
    """From connecting to the last byte, as the client measured it (curl's time_total: without starting curl)."""
    size: int
    digest: str | None
    """``sha256:<hex>`` of the body, or None when the client only counted the bytes."""
    finished: float
    """``time.perf_counter()`` when the client was done."""


class DownloadFunction(Protocol):
    """What every client is: ``client(url, token=..., hash_body=..., timeout=...)``."""

    def __call__(
        self, url: str, *, token: str | None = ..., hash_body: bool = ..., timeout: float = ...
    ) -> Download: ...


def download_client(name: ClientName) -> DownloadFunction:
    return curl_download if name == "curl" else socket_download


def curl_download(
    url: str, *, token: str | None = None, hash_body: bool = True, timeout: float = DEFAULT_TIMEOUT
) -> Download:
    """GET ``url`` with curl; with ``hash_body`` the body goes through ``openssl dgst -sha256``, else to /dev/null."""
    command = ["curl", "--silent", "--show-error", "--fail", "--location", "--max-time", f"{timeout:.0f}"]
    if token:
        command += ["--header", f"Authorization: Bearer {token}"]
    # Bytes and seconds on the last line: starting curl (a few ms) is not the server's time.
    write_out = "\n%{size_download} %{time_total}\n"
    if not hash_body:
        result = subprocess.run(
            [*command, "--output", "/dev/null", "--write-out", write_out, url],
            capture_output=True,
            text=True,
            timeout=timeout + 10,
            check=False,
        )
        if result.returncode != 0:
            raise DownloadError(f"curl exited with {result.returncode}: {result.stderr.strip()}")
        return _curl_download(result.stdout, None)
    # %{stderr}: the figures go to stderr, since stdout carries the body to openssl.
    with (
        subprocess.Popen(
            [*command, "--write-out", "%{stderr}" + write_out, url],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as curl,
        subprocess.Popen(
            ["openssl", "dgst", "-sha256", "-r"], stdin=curl.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as openssl,
    ):
        assert curl.stdout is not None and curl.stderr is not None
        # Only openssl reads curl's output now: if openssl dies, curl gets SIGPIPE rather than blocking forever.
        curl.stdout.close()
        try:
            hashed, openssl_stderr = openssl.communicate(timeout=timeout + 10)
            curl_stderr = curl.stderr.read().decode(errors="replace")
            curl.wait(timeout=10)
        except subprocess.TimeoutExpired as exc:
            curl.kill()
            openssl.kill()
            raise DownloadError(f"curl | openssl still running after {timeout + 10:.0f} s") from exc
    if curl.returncode != 0 or openssl.returncode != 0:
        raise DownloadError(
            f"curl exited with {curl.returncode}, openssl with {openssl.returncode}: "
            f"{curl_stderr.strip()} {openssl_stderr.decode(errors='replace').strip()}"
        )
    return _curl_download(curl_stderr, "sha256:" + hashed.decode().split()[0])


def _curl_download(write_out: str, digest: str | None) -> Download:
    size, seconds = write_out.strip().splitlines()[-1].split()
    return Download(float(seconds), int(size), digest, time.perf_counter())


def socket_download(
    url: str, *, token: str | None = None, hash_body: bool = True, timeout: float = DEFAULT_TIMEOUT
) -> Download:
    """The leanest client: one HTTP/1.1 GET on one socket, the body read into a reused buffer.

    Only what the benchmark's servers send: a 200 with a Content-Length (no redirects, no chunked bodies).
    """
    parts = urlsplit(url)
    if parts.hostname is None:
        raise DownloadError(f"no host in {url!r}")
    authorization = f"Authorization: Bearer {token}\r\n" if token else ""
    request = f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{authorization}Connection: close\r\n\r\n"
    started = time.perf_counter()
    hasher = hashlib.sha256() if hash_body else None
    try:
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout) as sock:
            sock.sendall(request.encode())
            head, body = _read_head(sock)
            length = _content_length(head)
            if hasher is not None:
                hasher.update(body)
            received = len(body)
            buffer = bytearray(READ_BUFFER)
            view = memoryview(buffer)
            # Bounded: every round reads at least one byte of a body of known length, or ends.
            while received < length:
                n = sock.recv_into(view)
                if n == 0:
                    break
                if hasher is not None:
                    hasher.update(view[:n])
                received += n
    except OSError as exc:
        raise DownloadError(f"{url}: {exc!r}") from exc
    finished = time.perf_counter()
    if received != length:
        raise DownloadError(f"{url}: short body, {received} of {length} bytes")
    return Download(finished - started, received, None if hasher is None else "sha256:" + hasher.hexdigest(), finished)


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """The response head up to the blank line, and whatever of the body came with it."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD:
            raise DownloadError("response head too large")
        chunk = sock.recv(MAX_HEAD)
        if not chunk:
            raise DownloadError("connection closed before the end of the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1] if head.count(b" ") >= 1 else b"?"
    if status != b"200":
        raise DownloadError(f"status {status.decode(errors='replace')}: {head[:200]!r}")
    return head, body


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise DownloadError("no Content-Length")


@dataclass(frozen=True)
class Crowd:
    seconds: float
    """From the first client's start to the last one's end, each as the client measured it."""
    downloads: list[Download]
    errors: list[str]


def download_together(
    url: str,
    clients: int,
    client: DownloadFunction,
    *,
    token: str | None = None,
    hash_body: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Crowd:
    """``clients`` downloads of ``url`` at the same time, one thread each (the clients do their work outside
    the GIL)."""
    downloads: list[Download] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            download = client(url, token=token, hash_body=hash_body, timeout=timeout)
        except (DownloadError, subprocess.SubprocessError, ValueError) as exc:
            with lock:
                errors.append(str(exc))
        else:
            with lock:
                downloads.append(download)

    threads = [threading.Thread(target=one, name=f"client-{n}", daemon=True) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout + 30
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    wall = time.perf_counter() - started
    with lock:
        missing = clients - len(downloads) - len(errors)
        if missing:
            errors.append(f"{missing} clients still running after {timeout + 30:.0f} s")
        if downloads:
            # Each client's own start (its end less its time), so that starting 8 curls is not counted.
            wall = max(d.finished for d in downloads) - min(d.finished - d.seconds for d in downloads)
        return Crowd(wall, list(downloads), list(errors))
