"""Certificates made in the test, with ``cryptography``: a plant CA, a broker certificate for
127.0.0.1, an agent client certificate (plain and password-protected key), and a rogue CA
with a client certificate of its own (what a broker must refuse)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KEY_PASSWORD = "s3cret-key-pass"  # tests assert it never appears in a log


@dataclass(frozen=True, slots=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path
    rogue_ca: Path
    rogue_cert: Path
    rogue_key: Path
    server_fingerprint: str  # sha256 of the server certificate (DER), hex


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, password: str | None = None) -> Path:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password is not None
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    path.chmod(0o600)
    return path


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, rogue_key_ca = _key(), _key()
    ca = _cert("Faultline test plant CA", ca_key, "Faultline test plant CA", ca_key, ca=True)
    rogue_ca = _cert("Rogue CA", rogue_key_ca, "Rogue CA", rogue_key_ca, ca=True)
    server_key, client_key, rogue_key = _key(), _key(), _key()
    server = _cert("127.0.0.1", server_key, "Faultline test plant CA", ca_key, server=True)
    client = _cert("faultline-agent", client_key, "Faultline test plant CA", ca_key)
    rogue = _cert("faultline-agent", rogue_key, "Rogue CA", rogue_key_ca)
    return Pki(
        ca=_write_cert(directory / "ca.pem", ca),
        server_cert=_write_cert(directory / "server.pem", server),
        server_key=_write_key(directory / "server.key", server_key),
        client_cert=_write_cert(directory / "client.pem", client),
        client_key=_write_key(directory / "client.key", client_key),
        client_key_encrypted=_write_key(directory / "client-enc.key", client_key, KEY_PASSWORD),
        rogue_ca=_write_cert(directory / "rogue-ca.pem", rogue_ca),
        rogue_cert=_write_cert(directory / "rogue.pem", rogue),
        rogue_key=_write_key(directory / "rogue.key", rogue_key),
        server_fingerprint=server.fingerprint(hashes.SHA256()).hex(),
    )


def tls_listener(port: int, pki: Pki, *, require_certificate: bool) -> list[str]:
    """mosquitto.conf lines of a TLS listener on loopback (TLS 1.2 or later)."""
    lines = [
        f"listener {port} 127.0.0.1",
        f"cafile {pki.ca}",
        f"certfile {pki.server_cert}",
        f"keyfile {pki.server_key}",
        "tls_version tlsv1.2",
        f"require_certificate {'true' if require_certificate else 'false'}",
    ]
    if require_certificate:
        lines.append("use_identity_as_username true")  # the certificate's CN is the user
    return lines
