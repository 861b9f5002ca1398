"""Observability on the real server: /metrics summed over two workers, JSON logs, the status page in headless
Chromium after real pulls, and a timeout that explains itself (the fault proxy in front of Distribution)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.harness.deadline import poll_until
from tests.harness.faults import Delay, FaultyUpstream
from tests.harness.images import Images
from tests.harness.proxy_server import ProxyServer
from tests.harness.registry import DistributionRegistry
from tests.harness.skopeo import skopeo_copy
from tests.integration.test_workers import children
from tests.unit.promtext import total

# Set to a path (docs/status-page.png) to keep the screenshot the README shows; by default it goes to the test's
# temporary directory.
SCREENSHOT_ENV = "REGISTRY_PROXY_STATUS_SCREENSHOT"
# What the page is checked under: a closed machine, no network, nothing the browser would fetch for itself.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--window-size=1280,1100",
)


def new_connection_get(url: str) -> httpx.Response:
    # A client of its own, so each request is a new connection: whichever worker accepts it answers.
    with httpx.Client(timeout=10) as client:
        return client.get(url, headers={"Connection": "close"})


def metrics_dir_of(pid: int) -> Path | None:
    # Each worker maps its metric files; that is how the test finds the directory the parent made.
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = Path(line.split()[-1]) if len(line.split()) >= 6 else None
        if path is not None and path.parent.name.startswith("registry-proxy-metrics-"):
            return path.parent
    return None


def worker_count(directory: Path, pid: int, tmp_path: Path, endpoint: str) -> float:
    """Requests to ``endpoint`` that worker ``pid`` alone answered, from its own counter file."""
    alone = Path(tempfile.mkdtemp(dir=tmp_path))
    shutil.copy(directory / f"counter_{pid}.db", alone)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "registry_proxy_requests_total" and sample.labels.get("endpoint") == endpoint
    )


def test_metrics_add_up_over_two_workers_and_logs_are_json_lines(
    upstream_registry: DistributionRegistry, images: Images, skopeo: str, tmp_path: Path
) -> None:
    config = '[log]\nformat = "json"\n'
    with ProxyServer(
        tmp_path / "proxy", upstream_registry.url, server_config="workers = 2", extra_config=config
    ) as proxy:
        assert proxy._process is not None
        parent = proxy._process.pid
        workers = poll_until(lambda: children(parent) if len(children(parent)) == 2 else None, timeout=20,
                             what="2 worker processes")  # fmt: skip
        image = images["oci"]
        skopeo_copy(proxy.ref(image.ref), tmp_path / "pulled")
        # Requests on new connections until both workers have answered some: the kernel picks, the test waits.
        directory = poll_until(
            lambda: metrics_dir_of(min(workers)) if new_connection_get(proxy.url + "/healthz") else None,
            timeout=20,
            what="the workers' metrics directory",
        )
        assert all(metrics_dir_of(pid) == directory for pid in workers)
        sent = 1
        for _ in range(20):
            for _ in range(10):
                assert new_connection_get(proxy.url + "/healthz").status_code == 200
                sent += 1
            if all(worker_count(directory, pid, tmp_path, "healthz") > 0 for pid in workers):
                break
        per_worker = {pid: worker_count(directory, pid, tmp_path, "healthz") for pid in workers}
        assert all(per_worker.values()), f"one worker answered every request: {per_worker}"
        # Whichever worker answers the scrape, it counts every worker's requests.
        for _ in range(4):
            text = new_connection_get(proxy.url + "/metrics").text
            assert total(text, "registry_proxy_requests_total", endpoint="healthz") == sent
            assert total(text, "registry_proxy_requests_total", endpoint="manifest", cache="miss") >= 1
            assert total(text, "registry_proxy_upstream_breaker_open") == 0
    access = []
    for line in proxy.log_path.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            assert "uvicorn" not in entry["logger"] or entry["level"] != "INFO", line
            if entry["logger"] == "proxy.access":
                access.append(entry)
    pulled = [e for e in access if e["path"] == f"/v2/{image.repository}/manifests/{image.tag}"]
    assert pulled and pulled[0]["cache"] == "miss" and pulled[0]["upstream"] == "docker.io"
    blob = image.blobs[-1].digest
    assert any(e["path"] == f"/v2/{image.repository}/blobs/{blob}" and e["bytes"] > 0 for e in access)
    assert sum(1 for e in access if e["path"] == "/healthz") == sent


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.skip("chromium and chromedriver (Debian packages chromium, chromium-driver) are not on PATH")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    log = tmp_path_factory.getbasetemp() / "chromedriver.txt"
    service = webdriver.ChromeService(executable_path=chromedriver, log_output=str(log))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_status_page_in_headless_chromium_after_real_pulls(
    upstream_registry: DistributionRegistry, images: Images, skopeo: str, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    image = images["oci"]
    with ProxyServer(tmp_path / "proxy", upstream_registry.url) as proxy:
        # The scripted run: a cold pull (every manifest and blob a miss), then the same pull warm (every one a hit).
        skopeo_copy(proxy.ref(image.ref), tmp_path / "cold")
        skopeo_copy(proxy.ref(image.ref), tmp_path / "warm")
        text = httpx.get(proxy.url + "/metrics", timeout=10).text
        hits = total(text, "registry_proxy_requests_total", cache="hit")
        misses = total(text, "registry_proxy_requests_total", cache="miss")
        assert hits == misses == 1 + len(image.blobs)
        # The cache's size comes from the inventory, written and read about once a second.
        poll_until(
            lambda: (
                True
                if total(httpx.get(proxy.url + "/metrics", timeout=10).text, "registry_proxy_cache_bytes")
                else None
            ),
            timeout=15,
            what="the cache's size in /metrics",
        )
        browser.get(proxy.url + "/")
        assert browser.title == "registry-proxy status"
        assert browser.find_element(By.ID, "hit-ratio").text == "50.0 %"
        assert browser.find_element(By.ID, "hub-pulls-saved").text == "1"
        top = browser.find_element(By.ID, "top-images").text
        assert f"docker.io/{image.repository} 2" in top
        assert browser.find_element(By.ID, "cache-use").text.endswith(("KiB", "MiB"))
        upstreams = browser.find_element(By.ID, "upstreams").text
        assert "docker.io answering" in upstreams
        screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "status-page.png")
        assert browser.save_screenshot(str(screenshot))
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_slow_upstream_is_explained_once(upstream_registry: DistributionRegistry, tmp_path: Path) -> None:
    with FaultyUpstream(upstream_registry.url) as faulty:
        # The /v2/ ping answers; the manifest takes longer than the proxy waits.
        faulty.add(Delay(path="/manifests/", seconds=5))
        with ProxyServer(tmp_path / "proxy", faulty.url, read_timeout="1s") as proxy:
            url = proxy.url + "/v2/library/slow/manifests/1"
            answers = [httpx.get(url, timeout=15) for _ in range(2)]
    expected = "upstream docker.io timed out after 1 s waiting for 127.0.0.1 to answer"
    for answer in answers:
        assert answer.status_code == 504
        assert answer.json()["errors"][0] == {"code": "UPSTREAM_TIMEOUT", "message": expected, "detail": {}}
    warnings = [line for line in proxy.log_path.read_text().splitlines() if " WARNING " in line and expected in line]
    assert len(warnings) == 1, warnings  # the repeat is counted, not logged again
    assert "proxy.upstream.client" in warnings[0]
