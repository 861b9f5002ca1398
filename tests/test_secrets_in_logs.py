"""The last test of the suite: no log the proxy wrote, in any test, holds a password, a token or a credential header.

It reads every proxy log (``proxy.log`` of each ``registry-proxy serve`` the tests ran), the CLI's captured output
where tests kept it, and every record of the code run in-process (``in-process.log``), and looks for every secret
the suite registered (upstream passwords, client passwords, static tokens, and every token the stand-in token
issuer and the proxy's own token service handed out), plus any ``Authorization`` value.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import IN_PROCESS_LOG, Secrets

# A credential header or a Basic/Bearer value, however a log line might have written it.
_CREDENTIAL = re.compile(r"(?i)(authorization[\"']?\s*[:=]|\b(basic|bearer)\s+[A-Za-z0-9+/=._-]{12,})")
_LOG_NAMES = ("proxy.log", IN_PROCESS_LOG)


def logs(base: Path) -> list[Path]:
    return sorted(p for name in _LOG_NAMES for p in base.rglob(name) if p.is_file())


def test_no_secret_in_any_log(tmp_path_factory: pytest.TempPathFactory, used_secrets: Secrets) -> None:
    base = tmp_path_factory.getbasetemp()
    secrets = used_secrets.all()
    found: list[str] = []
    checked = 0
    for path in logs(base):
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            checked += 1
            if any(secret in line for secret in secrets) or _CREDENTIAL.search(line):
                found.append(f"{path.relative_to(base)}:{number}: {line[:200]}")
    assert not found, "log lines holding a credential:\n" + "\n".join(found[:20])
    print(f"checked {checked} log lines in {len(logs(base))} files for {len(secrets)} secrets")
