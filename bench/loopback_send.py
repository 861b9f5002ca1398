"""How fast this machine sends a cached file to a client on loopback, three ways, with no server framework around it.

    .venv/bin/python -m bench.loopback_send [--mib 200] [--runs 5]

A plain blocking loop in one thread serves a file (in the page cache) to curl on 127.0.0.1, by ``sendfile`` (what
the proxy does for cached blobs), by ``read`` into a 4 MiB buffer and ``write`` (what nginx does with
``sendfile off; output_buffers 2 4m``, the benchmark's limit), and by ``splice`` through a 1 MiB pipe. Prints the
median throughput of each: the ceiling of each way of sending on this machine, which the warm-blob figures of
``bench.compare`` are bound by. Over loopback no network card takes the bytes: the receiver's kernel copies them
either way, so the copy ``sendfile`` saves the sender can matter less here than elsewhere, or not at all.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import socket
import statistics
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["main", "measure"]

_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux; named in the fcntl module from Python 3.10
_PIPE = 1024 * 1024
_BUFFER = 4 * 1024 * 1024
_SENDFILE_STEP = 8 * 1024 * 1024  # as the proxy's zero-copy sends (proxy/pullthrough/segments.py)

Sender = Callable[[socket.socket, int, int], None]


def _by_sendfile(conn: socket.socket, fd: int, size: int) -> None:
    offset = 0
    while offset < size:
        sent = os.sendfile(conn.fileno(), fd, offset, min(_SENDFILE_STEP, size - offset))
        if sent == 0:
            return
        offset += sent


def _by_read_write(conn: socket.socket, fd: int, size: int) -> None:
    buffer = bytearray(_BUFFER)
    view = memoryview(buffer)
    while n := os.readv(fd, [buffer]):
        conn.sendall(view[:n])


def _by_splice(conn: socket.socket, fd: int, size: int) -> None:
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, _F_SETPIPE_SZ, _PIPE)
        offset = 0
        while offset < size:
            moved = os.splice(fd, write_end, min(_PIPE, size - offset), offset_src=offset)
            if moved == 0:
                return
            offset += moved
            while moved:
                moved -= os.splice(read_end, conn.fileno(), moved)
    finally:
        os.close(read_end)
        os.close(write_end)


SENDERS: dict[str, Sender] = {"sendfile": _by_sendfile, "read/write": _by_read_write, "splice": _by_splice}


def measure(path: Path, sender: Sender, runs: int) -> list[float]:
    """Bytes per second of ``runs`` downloads of ``path`` by curl from a loopback server sending with ``sender``."""
    size = path.stat().st_size
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(30)
        port = listener.getsockname()[1]

        def serve() -> None:
            for _ in range(runs):
                conn, _ = listener.accept()
                with conn:
                    conn.recv(65536)  # the request: one small GET
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        sender(conn, fd, size)
                    finally:
                        os.close(fd)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        rates = []
        for _ in range(runs):
            result = subprocess.run(
                ["curl", "--silent", "--fail", "--output", "/dev/null", "--write-out", "%{size_download} %{time_total}",
                 f"http://127.0.0.1:{port}/"],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            received, seconds = result.stdout.split()
            if int(received) != size:
                raise RuntimeError(f"curl got {received} of {size} bytes")
            rates.append(size / float(seconds))
        server.join(timeout=30)
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loopback_send", description=__doc__)
    parser.add_argument("--mib", type=int, default=200, help="size of the file sent (default 200)")
    parser.add_argument("--runs", type=int, default=5, help="downloads per way of sending (default 5; median)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="loopback-send-") as tmp:
        path = Path(tmp) / "blob"
        with path.open("wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1024 * 1024))
        for name, sender in SENDERS.items():
            _read_once(path)
            rates = measure(path, sender, args.runs)
            runs = ", ".join(f"{r / 1e9:.2f}" for r in rates)
            print(f"{name:<11} {statistics.median(rates) / 1e9:.2f} GB/s (runs: {runs})", flush=True)
    return 0


def _read_once(path: Path) -> None:
    """Read the file once, so that every way of sending finds it in the page cache."""
    with path.open("rb") as f:
        while f.read(_BUFFER):
            pass


if __name__ == "__main__":
    raise SystemExit(main())
