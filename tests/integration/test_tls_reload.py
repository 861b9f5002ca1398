"""``[server] tls_cert``/``tls_key`` are reloaded on SIGHUP: new connections get the new certificate, no restart."""

from __future__ import annotations

import hashlib
import shutil
import signal
import ssl
from pathlib import Path

import httpx

from tests.harness.deadline import poll_until
from tests.harness.ports import LOOPBACK
from tests.harness.proxy_server import ProxyServer
from tests.harness.tls import make_certificates


def served_fingerprint(port: int) -> str:
    pem = ssl.get_server_certificate((LOOPBACK, port), timeout=5)
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def fingerprint(path: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(path.read_text())).hexdigest()


def test_sighup_reloads_the_certificate(tmp_path: Path) -> None:
    first = make_certificates(tmp_path / "first")
    second = make_certificates(tmp_path / "second")
    live_cert, live_key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(first.cert, live_cert)
    shutil.copy(first.key, live_key)
    server = f'tls_cert = "{live_cert}"\ntls_key = "{live_key}"\n'
    with ProxyServer(tmp_path / "proxy", "http://127.0.0.1:9", server_config=server, ca=first.ca) as proxy:
        assert served_fingerprint(proxy.port) == fingerprint(first.cert)
        # Renewed (another CA here, so a client can tell which one answers), then SIGHUP.
        shutil.copy(second.cert, live_cert)
        shutil.copy(second.key, live_key)
        assert proxy._process is not None
        proxy._process.send_signal(signal.SIGHUP)
        poll_until(lambda: True if served_fingerprint(proxy.port) == fingerprint(second.cert) else None,
                   timeout=10, what="the new certificate")  # fmt: skip
        verify = ssl.create_default_context(cafile=second.ca)
        assert httpx.get(proxy.url + "/v2/", verify=verify, timeout=5).status_code == 200
        assert proxy._process.poll() is None  # still the same process
        # A broken renewal keeps the working certificate.
        live_cert.write_text("not a certificate")
        proxy._process.send_signal(signal.SIGHUP)
        assert httpx.get(proxy.url + "/v2/", verify=verify, timeout=5).status_code == 200
        assert "keeping the current TLS certificate" in poll_until(
            lambda: proxy.log_tail(200) if "keeping the current" in proxy.log_tail(200) else None,
            timeout=10, what="the reload error in the log")  # fmt: skip
