from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.warm.upstream import Seeded, seed, serve


@pytest.fixture
def seeded() -> Seeded:
    return seed()


@pytest.fixture
def proxy_url(seeded: Seeded, tmp_path: Path) -> Iterator[str]:
    yield from serve(seeded.fake, tmp_path / "cache")
