"""``[storage] max_size`` and ``low_watermark``: sizes with units, errors named by key."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, StorageSettings, load, parse_size
from proxy.lifecycle.budget import Budget


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"[storage]\n{text}\n")
    return path


@pytest.mark.parametrize(
    ("value", "size"),
    [(1024, 1024), ("300MiB", 300 * 2**20), ("50GiB", 50 * 2**30), ("2 TiB", 2 * 2**40), ("1.5GiB", 3 * 2**29),
     ("10KiB", 10240), ("5MB", 5_000_000), ("2GB", 2 * 10**9), ("300mib", 300 * 2**20), ("4096", 4096)],
)  # fmt: skip
def test_sizes(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["lots", "", "5 PB", "-1GiB", True, 1.5, [1]])
def test_bad_sizes(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


def test_budget_with_default_watermark(tmp_path: Path) -> None:
    storage = load(write(tmp_path, 'max_size = "300MiB"'), environ={}).storage
    assert storage.max_size == 300 * 2**20 and storage.low_watermark is None
    assert Budget.of(storage) == Budget(300 * 2**20, int(300 * 2**20 * 0.9))
    assert Budget.of(StorageSettings()) is None


@pytest.mark.parametrize(("text", "low"), [('"80%"', 80 * 2**20), ('"50MiB"', 50 * 2**20), (str(2**20), 2**20)])
def test_watermark(tmp_path: Path, text: str, low: int) -> None:
    storage = load(write(tmp_path, f'max_size = "100MiB"\nlow_watermark = {text}'), environ={}).storage
    assert Budget.of(storage) == Budget(100 * 2**20, low)


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('max_size = "lots"', "storage.max_size", '"300MiB"'),
        ("max_size = 0", "storage.max_size", "more than 0"),
        ('max_size = "-5GiB"', "storage.max_size", "expected a size"),
        ('low_watermark = "90%"', "storage.low_watermark", "needs storage.max_size"),
        ('max_size = "1GiB"\nlow_watermark = "2GiB"', "storage.low_watermark", "at most max_size"),
        ('max_size = "1GiB"\nlow_watermark = "0%"', "storage.low_watermark", "more than 0"),
        ('max_size = "1GiB"\nlow_watermark = "half"', "storage.low_watermark", '"90%"'),
        ('max_size = "1GiB"\nlow_watermark = "x%"', "storage.low_watermark", '"90%"'),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load(path, environ={})
    assert str(error.value).startswith(f"{path}: {key}: ")
    assert words in str(error.value)
