"""``registry-proxy warm`` through the CLI's entry point: exit statuses, what is printed, running vs stopped."""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from rich.console import Console

from proxy.cli import main
from proxy.warm.client import BlobOutcome
from proxy.warm.display import ProgressDisplay
from tests.harness.htpasswd import write_htpasswd
from tests.harness.ports import free_port


@pytest.fixture(autouse=True)
def _no_config_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGISTRY_PROXY_CONFIG", raising=False)


def config_file(tmp_path: Path, *, port: int, root: Path | None = None, extra: str = "") -> Path:
    upstream = free_port()  # nothing listens there: every upstream request fails at once
    path = tmp_path / "config.toml"
    path.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[storage]\nroot = "{root or tmp_path / "cache"}"\n'
        f'[[upstreams]]\nregistry = "docker.io"\nurl = "http://127.0.0.1:{upstream}"\nconnect_timeout = "1s"\n'
        f"{extra}"
    )
    return path


def test_warm_through_a_running_proxy(proxy_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("ARG TAG=1\nFROM app:${TAG}\nFROM app:${MISSING}\n")
    assert main(["warm", "--proxy", proxy_url, "--from", str(dockerfile)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"skipped         app:${{MISSING}} ({dockerfile}:3): unresolved variable ${{MISSING}}"
    assert out[1].startswith("fetched         docker.io/library/app:1 [linux/amd64, linux/arm64/v8] ")
    assert out[1].endswith(f" ({dockerfile}:2): 6 blobs, 109.4 KiB; fetched 6 (109.4 KiB)")
    assert out[2:] == [
        "images: 0 cached already, 1 fetched, 0 failed, 1 skipped",
        "blobs: 0 cached already (0 B), 6 fetched (109.4 KiB), 0 failed",
    ]

    assert main(["warm", "--proxy", proxy_url, "--platform", "linux/amd64", "app:1", "app:nope"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("cached already  docker.io/library/app:1 [linux/amd64]: 3 blobs")
    assert out[1] == "failed          docker.io/library/app:nope: 404 MANIFEST_UNKNOWN: manifest unknown"
    assert out[2] == "images: 1 cached already, 0 fetched, 1 failed, 0 skipped"


def test_an_unparseable_file_is_one_line_and_the_others_still_run(
    proxy_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / ".gitlab-ci.yml"
    broken.write_text("test:\n  image: 'unclosed\n")
    compose = tmp_path / "compose.yaml"
    compose.write_text("services:\n  app:\n    image: app:1\n    platform: linux/arm64\n")
    assert main(["warm", "--proxy", proxy_url, "--from", str(broken), str(compose)]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"registry-proxy: warm: {broken}: line 3: invalid YAML: "
                                         "found unexpected end of stream"]  # fmt: skip
    assert captured.out.splitlines()[0].startswith("fetched         docker.io/library/app:1 [linux/arm64/v8]")
    assert captured.out.splitlines()[-1] == "files: 1 could not be read"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to warm"),
        (["alpine", "--proxy", "http://127.0.0.1:1", "--stopped"], "--proxy and --stopped exclude each other"),
        (["alpine", "--platform", "amd64"], "--platform: expected os/architecture"),
        (["alpine", "--proxy", "ftp://x"], "--proxy: expected http(s)://host[:port]"),
        (["alpine", "--jobs", "0"], "--jobs must be between 1 and 64"),
        (["alpine", "--username", "ci"], "--username needs --password-env or --password-file"),
        (["alpine", "--password-env", "HOME"], "a password is given but no --username"),
        (["alpine", "--username", "ci", "--password-env", "NO_SUCH_VARIABLE_HERE"], "NO_SUCH_VARIABLE_HERE is not set"),
        (["alpine", "--cacert", "/nonexistent/ca.crt"], "--cacert: cannot use /nonexistent/ca.crt"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["warm", *args]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("registry-proxy: warm: ") and message in err[0]


def test_no_proxy_answering_and_no_config_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["warm", "--proxy", url, "alpine"]) == 2
    assert capsys.readouterr().err == f"registry-proxy: warm: --proxy: nothing listens at {url}\n"


def test_with_a_config_and_nothing_answering_the_cache_is_warmed_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_file(tmp_path, port=free_port())
    # The upstream is down: the image fails, through the in-process proxy's own answer.
    assert main(["warm", "--config", str(config), "alpine:3.20"]) == 1
    captured = capsys.readouterr()
    assert "nothing listens at http://127.0.0.1:" in captured.err and str(tmp_path / "cache") in captured.err
    assert captured.out.startswith("failed          docker.io/library/alpine:3.20: 503 UPSTREAM_UNAVAILABLE")
    assert (tmp_path / "cache").is_dir()


def test_stopped_refuses_when_a_proxy_answers_at_the_configs_address(
    proxy_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_file(tmp_path, port=urlsplit(proxy_url).port or 0, root=tmp_path / "stopped-cache")
    assert main(["warm", "--config", str(config), "--stopped", "alpine"]) == 2
    assert "something listens at" in capsys.readouterr().err
    assert not (tmp_path / "stopped-cache").exists()


def test_stopped_refuses_an_unusable_cache_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = config_file(tmp_path, port=free_port(), root=blocker / "cache")
    assert main(["warm", "--config", str(config), "--stopped", "alpine"]) == 2
    assert capsys.readouterr().err.startswith(f"registry-proxy: warm: storage.root: {blocker / 'cache'} is not usable")


def test_stopped_knows_which_registries_are_served(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_file(tmp_path, port=free_port())
    # Nothing to pull, so nothing is served either: the reference fails before any request.
    assert main(["warm", "--config", str(config), "--stopped", "ghcr.io/org/app:1"]) == 1
    out = capsys.readouterr().out
    assert "ghcr.io/org/app:1: not served by this proxy (no [[upstreams]] entry for ghcr.io)" in out
    assert not (tmp_path / "cache").exists()


def test_the_progress_display_follows_the_blobs() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with ProgressDisplay(console, images=1) as display:
        display.image_started("docker.io/library/app:1")
        display.blobs_found(2, 300)
        display.blob_started("sha256:" + "a" * 64, 100)
        display.blob_finished("sha256:" + "a" * 64, 100, BlobOutcome.CACHED)
        display.blob_started("sha256:" + "b" * 64, 200)
        display.blob_advanced("sha256:" + "b" * 64, 150)
        display.blob_advanced("sha256:" + "b" * 64, 50)
        display.blob_finished("sha256:" + "b" * 64, 200, BlobOutcome.FETCHED)
        overall = display._progress.tasks[0]
        assert (overall.completed, overall.total, len(display._progress.tasks)) == (300, 300, 1)
        assert "blobs 2/2" in overall.description
    assert "docker.io/library/app:1" in out.getvalue()


def test_a_stopped_cache_keeps_its_access_rules_and_warm_logs_in(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", {"ci": "warm-secret-1"})
    rules = f'[auth]\nhtpasswd = "{htpasswd}"\n[[access]]\nrepository = "*"\npull = "authenticated"\n'
    config = config_file(tmp_path, port=free_port(), extra=rules)
    assert main(["warm", "--config", str(config), "--stopped", "alpine:3.20"]) == 1
    assert capsys.readouterr().out.startswith("failed          docker.io/library/alpine:3.20: 401 UNAUTHORIZED")

    monkeypatch.setenv("WARM_PASSWORD", "warm-secret-1")
    login = ["--username", "ci", "--password-env", "WARM_PASSWORD"]
    assert main(["warm", "--config", str(config), "--stopped", *login, "alpine:3.20"]) == 1
    captured = capsys.readouterr()
    # Past the login: the upstream (down here) is what fails now.
    assert captured.out.startswith("failed          docker.io/library/alpine:3.20: 503 UPSTREAM_UNAVAILABLE")
    assert "warm-secret-1" not in captured.out + captured.err
