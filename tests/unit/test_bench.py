"""The benchmark's parts that need no servers of ours: reading wrk, judging targets, naming results, the clients
against a tiny local server, and memory summed over a process tree. (tests/integration/test_bench_quick.py runs
the whole benchmark.)"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.clients import DownloadError, curl_download, download_together, socket_download
from bench.figures import DISTRIBUTION, NGINX, PROXY, UPSTREAM, Measured
from bench.loopback_send import SENDERS, measure
from bench.processes import cpu_seconds, descendants, peak_rss_bytes, settled_cpu_seconds
from bench.report import format_figure, result_paths
from bench.targets import Target, evaluate
from bench.wrk import WrkError, parse_wrk

WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:40000/v2/library/oci-image/manifests/1
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.78ms    7.14ms  68.16ms   96.04%
    Req/Sec    20.39k     5.60k   31.09k    80.00%
  Latency Distribution
     50%  377.00us
     75%  461.00us
     90%  756.00us
     99%   45.05ms
  40547 requests in 1.00s, 13.61MB read
{extra}Requests/sec:  40391.53
Transfer/sec:     13.56MB
"""


def test_wrk_output_gives_rate_percentiles_and_errors():
    result = parse_wrk(WRK_OUTPUT.format(extra="  Socket errors: connect 0, read 2, write 0, timeout 1\n"))

    assert result.requests_per_second == 40391.53
    assert result.p50 == pytest.approx(377e-6)
    assert result.p99 == pytest.approx(45.05e-3)
    assert result.requests == 40547
    assert result.socket_errors == 3


def test_wrk_run_with_error_answers_is_no_figure():
    with pytest.raises(WrkError, match="40547 answers were not 2xx"):
        parse_wrk(WRK_OUTPUT.format(extra="  Non-2xx or 3xx responses: 40547\n"))


def test_unreadable_wrk_output_is_an_error():
    with pytest.raises(WrkError, match="cannot read"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def measured(key: str, runs: dict[str, list[float]], aggregate: str = "median") -> Measured:
    return Measured(key, key, "s", runs, aggregate=aggregate)  # type: ignore[arg-type]


def test_targets_divide_by_the_anchor_or_judge_the_figure_itself():
    figures = {
        "cold_blob": measured(
            "cold_blob", {UPSTREAM: [1.0, 1.0, 1.0], PROXY: [1.2, 5.0, 1.2], DISTRIBUTION: [2, 2, 2]}
        ),
        "warm_blob": measured("warm_blob", {NGINX: [10.0], PROXY: [8.0], DISTRIBUTION: [9.0]}),
        "herd_wall": measured("herd_wall", {PROXY: [1.8], DISTRIBUTION: [20.0]}),
        "peak_rss": measured("peak_rss", {PROXY: [150e6, 250e6], DISTRIBUTION: [40e6]}, aggregate="max"),
    }
    targets = [
        Target("cold_blob", "cold", "<=", 1.3, ("cold_blob", UPSTREAM)),
        Target("warm_blob", "warm", ">=", 0.9, ("warm_blob", NGINX)),
        Target("herd_wall", "herd", "<=", 1.5, ("cold_blob", None)),
        Target("peak_rss", "rss", "<=", 200, divisor=1e6, unit=" MB"),
    ]

    cold, warm, herd, rss = evaluate(targets, figures)

    assert cold.ratios == {PROXY: 1.2, DISTRIBUTION: 2.0} and cold.met  # the median ignores the 5.0 s run
    assert warm.ratios[PROXY] == pytest.approx(0.8) and not warm.met
    assert herd.ratios == {PROXY: 1.5, DISTRIBUTION: 10.0} and herd.met  # each against its own cold pull
    assert rss.ratios == {PROXY: 250, DISTRIBUTION: 40} and not rss.met  # a budget: the worst run counts


def test_figures_are_printed_in_readable_units():
    assert format_figure(0.0042, "s") == "4.2 ms"
    assert format_figure(1.234, "s") == "1.23 s"
    assert format_figure(2.4e9, "B/s") == "2.40 GB/s"
    assert format_figure(170e6, "B/s") == "170 MB/s"
    assert format_figure(3537.4, "req/s") == "3,537 req/s"
    assert format_figure(93.2e6, "B") == "93 MB"


def test_a_second_result_of_the_day_does_not_overwrite_the_first(tmp_path: Path):
    first = result_paths(tmp_path / "results", "2026-11-29T19:30:00+00:00")
    first[0].write_text("{}")
    second = result_paths(tmp_path / "results", "2026-11-29T21:00:00+00:00")

    assert [p.name for p in first] == ["2026-11-29.json", "2026-11-29.png"]
    assert [p.name for p in second] == ["2026-11-29-2.json", "2026-11-29-2.png"]


BODY = bytes(range(256)) * 4096  # 1 MiB


class _BlobHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path != "/blob" or self.headers.get("Authorization", "Bearer t") != "Bearer t":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def blob_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BlobHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.parametrize("client", [socket_download, curl_download], ids=["socket", "curl"])
def test_clients_hash_or_count_the_body(blob_server: str, client):
    if client is curl_download and not (shutil.which("curl") and shutil.which("openssl")):
        pytest.skip("curl and openssl are not installed")
    digest = "sha256:" + hashlib.sha256(BODY).hexdigest()

    hashed = client(f"{blob_server}/blob", token="t")
    counted = client(f"{blob_server}/blob", hash_body=False)

    assert (hashed.size, hashed.digest) == (len(BODY), digest)
    assert (counted.size, counted.digest) == (len(BODY), None)
    assert hashed.seconds > 0
    with pytest.raises(DownloadError):
        client(f"{blob_server}/missing")


def test_clients_together_report_each_outcome(blob_server: str):
    crowd = download_together(f"{blob_server}/blob", 3, socket_download)
    failed = download_together(f"{blob_server}/missing", 2, socket_download)

    assert [d.size for d in crowd.downloads] == [len(BODY)] * 3 and not crowd.errors
    assert crowd.seconds >= max(d.seconds for d in crowd.downloads)
    assert not failed.downloads and len(failed.errors) == 2


def test_cpu_time_counts_the_busy_threads_of_the_whole_tree_and_settles_when_they_stop():
    # A parent that sleeps, and a child whose second thread spins for 0.3 s of CPU, then sleeps (a thread that ended
    # is not counted: the servers measured keep theirs, a pool's or Go's).
    spin = "import time\nt = time.thread_time()\nwhile time.thread_time() - t < 0.3: pass\ntime.sleep(30)"
    child = f"import threading, time; threading.Thread(target=exec, args=({spin!r},)).start(); time.sleep(30)"
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(30)"
    process = subprocess.Popen([sys.executable, "-c", parent])
    try:
        before = cpu_seconds(process.pid)
        settled = settled_cpu_seconds(process.pid, quiet=0.5, limit=10)
        assert len(descendants(process.pid)) == 2
        assert settled - before >= 0.25  # the spinning thread, in a child: counted
        assert cpu_seconds(process.pid) - settled < 0.1  # and nothing much after it stopped
    finally:
        for pid in reversed(descendants(process.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        process.wait(timeout=10)


def test_peak_rss_sums_the_whole_process_tree():
    # A parent that starts a child which holds 64 MB: the tree's figure counts both.
    child = "b = bytearray(64_000_000); import time; time.sleep(30)"
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(30)"
    process = subprocess.Popen([sys.executable, "-c", parent])
    tree = [process.pid]
    try:
        for _ in range(200):  # the child takes a moment to start and fill its memory
            tree = descendants(process.pid)
            if len(tree) == 2 and peak_rss_bytes(tree[1]) > 64_000_000:
                break
            time.sleep(0.05)
        assert tree[0] == process.pid and len(tree) == 2
        child_peak = peak_rss_bytes(tree[1])
        assert child_peak > 64_000_000
        assert peak_rss_bytes(process.pid) > child_peak  # the parent's own memory on top
    finally:
        for pid in reversed(tree):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        process.wait(timeout=10)


@pytest.mark.parametrize("way", sorted(SENDERS))
def test_each_way_of_sending_a_file_on_loopback_delivers_it_whole(way: str, tmp_path: Path):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (./scripts/test installs it)")
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # not a multiple of any step the senders take
    rates = measure(path, SENDERS[way], runs=2)  # measure() checks curl got every byte
    assert len(rates) == 2 and all(rate > 0 for rate in rates)
