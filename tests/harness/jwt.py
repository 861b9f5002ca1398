"""RS256 JSON Web Tokens signed the way CNCF Distribution 2.8 verifies them.

Distribution finds the verification key through the token header's ``kid``: it computes the libtrust key ID of every
certificate in its ``rootcertbundle`` and looks the ``kid`` up among them. So the key ID here must be computed exactly
as libtrust does, and the certificate we write must carry the same public key.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID


def b64url(data: bytes) -> str:
    """Base64url without padding, as JWS compact serialization requires."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def libtrust_key_id(public_key: rsa.RSAPublicKey) -> str:
    """The libtrust key ID: SHA-256 of the DER SubjectPublicKeyInfo, first 240 bits, base32, in groups of four.

    240 bits are exactly 48 base32 characters, so there is never any padding to strip.
    """
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


class SigningKey:
    """An RSA 2048 key with a self-signed certificate, for signing registry tokens."""

    def __init__(self, common_name: str = "test-token-issuer") -> None:
        # 2048 bits: the smallest size that is still realistic, and key generation stays well under a second.
        self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_id = libtrust_key_id(self._private_key.public_key())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._private_key.public_key())
            .serial_number(x509.random_serial_number())
            # Backdated a little so that a clock that is slightly behind does not reject it.
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(self._private_key, hashes.SHA256())
        )

    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write_cert(self, path: Path) -> Path:
        """Write the certificate as PEM, which is what Distribution's ``auth.token.rootcertbundle`` names."""
        path.write_bytes(self.cert_pem())
        return path

    def sign(self, claims: dict[str, Any]) -> str:
        """Return a compact JWS: base64url(header).base64url(claims).base64url(RS256 signature)."""
        header = {"typ": "JWT", "alg": "RS256", "kid": self.key_id}
        signing_input = f"{b64url(_compact_json(header))}.{b64url(_compact_json(claims))}"
        signature = self._private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a token into its header and claims without checking the signature (for assertions in tests)."""
    header_b64, claims_b64, _signature = token.split(".")
    return _b64url_json(header_b64), _b64url_json(claims_b64)


def _compact_json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _b64url_json(part: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded
