"""``[server] workers``: several processes serve one port; the parent supervises them."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx

from tests.harness.deadline import poll_until
from tests.harness.proxy_server import ProxyServer


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


def test_workers_serve_are_restarted_and_stop_together(tmp_path: Path) -> None:
    # No upstream is ever contacted: /v2/ is answered by the proxy itself.
    with ProxyServer(tmp_path / "proxy", "http://127.0.0.1:9", server_config="workers = 3") as proxy:
        assert proxy._process is not None
        parent = proxy._process.pid

        def three_workers() -> set[int] | None:
            now = children(parent)
            return now if len(now) == 3 else None

        workers = poll_until(three_workers, timeout=20, what="3 worker processes")
        for _ in range(30):
            assert httpx.get(proxy.url + "/v2/", timeout=5).status_code == 200
        # A worker that dies is replaced; the others go on serving meanwhile.
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)

        def replacement() -> set[int] | None:
            now = children(parent)  # one snapshot: the victim may be reaped between two reads of /proc
            return now if len(now) == 3 and victim not in now else None

        replaced = poll_until(replacement, timeout=20, what="a replacement worker")
        assert len(replaced - workers) == 1
        assert httpx.get(proxy.url + "/v2/", timeout=5).status_code == 200
        started = time.monotonic()
        proxy._process.send_signal(signal.SIGTERM)
        assert proxy._process.wait(timeout=40) == 0
        assert time.monotonic() - started < 40
        assert all(not Path(f"/proc/{pid}").exists() for pid in replaced)
