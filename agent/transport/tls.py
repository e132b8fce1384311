"""TLS for the MQTT link: the option group, the checks made at load, the context, the hints.

Three jobs, kept out of ``mqtt.py`` so the link's state machine stays readable:

- ``check_tls_material`` opens every file the configuration names (CA bundle, client
  certificate, private key with its password) the way the connection will, so a missing,
  unreadable, unparsable or mismatched file is a configuration error naming its key at
  ``check-config`` and at start-up, not a ``FileNotFoundError`` from inside paho later.
- ``make_ssl_context`` builds the one ``ssl.SSLContext`` the client uses: system or given
  CAs, a version floor, host-name checking unless ``tls_insecure``, the client certificate,
  and optional pinning of the server certificate's sha256 fingerprint. The pin is checked
  right after the handshake, before paho sends CONNECT, so a broker with the wrong
  certificate never sees the username or password.
- ``explain_tls_error`` turns OpenSSL's reason codes into a sentence that names the key to
  change ("the broker refused our client certificate: check mqtt.certfile ...").

Secrets (the key password) are never part of a message or a ``repr``.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

__all__ = [
    "PinMismatchError",
    "TlsMaterialError",
    "TlsParameters",
    "check_tls_material",
    "explain_tls_error",
    "fingerprint_of",
    "make_ssl_context",
    "speaks_tls",
]

TlsVersion = Literal["1.2", "1.3"]
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_MAX_FILE_BYTES = 1 << 20  # a PEM bundle of a few hundred CAs is ~250 kB


class TlsMaterialError(ValueError):
    """A TLS file cannot be used; ``key`` is the mqtt setting to fix."""

    def __init__(self, key: str, expected: str, value: object) -> None:
        super().__init__(expected)
        self.key = key
        self.value = value


class PinMismatchError(ssl.SSLError):
    """The broker's certificate is not the pinned one (raised before CONNECT is sent)."""


@dataclass(frozen=True, slots=True)
class TlsParameters:
    """How to speak TLS to the broker (aiomqtt's ``TLSParameters``, with a pin)."""

    ca_certs: str | None = None  # None: the system store
    certfile: str | None = None  # client certificate (PEM; may hold the key too)
    keyfile: str | None = None
    keyfile_password: str | None = field(default=None, repr=False)
    min_version: TlsVersion = "1.2"
    insecure: bool = False  # skip host-name checking (the chain is still verified)
    fingerprint_sha256: str | None = None  # 64 lowercase hex digits, no colons


def fingerprint_of(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def _colons(hex_digest: str) -> str:
    return ":".join(hex_digest[i : i + 2] for i in range(0, len(hex_digest), 2))


def _read(key: str, path: Path, what: str) -> bytes:
    try:
        if not path.is_file():
            reason = "not a regular file" if path.exists() else "no such file"
            raise TlsMaterialError(key, f"{what} ({reason})", str(path))
        if path.stat().st_size > _MAX_FILE_BYTES:
            raise TlsMaterialError(key, f"{what} (larger than 1 MiB)", str(path))
        return path.read_bytes()
    except PermissionError:
        raise TlsMaterialError(key, f"{what} (not readable by this user)", str(path)) from None
    except OSError as exc:
        raise TlsMaterialError(key, f"{what} ({exc.strerror or exc})", str(path)) from None


def _load_key(data: bytes, key: str, path: Path, password: str | None) -> PrivateKeyTypes:
    secret = password.encode() if password is not None else None
    try:
        return serialization.load_pem_private_key(data, secret)
    except TypeError:
        if password is None:
            raise TlsMaterialError(
                "keyfile_password", f"the password of the encrypted key in {path}", None
            ) from None
        raise TlsMaterialError(
            "keyfile_password", f"null: the key in {path} is not encrypted", "'***'"
        ) from None
    except ValueError:
        if password is not None:
            raise TlsMaterialError(
                "keyfile_password",
                f"the password that decrypts {path} (this one does not, or the key is "
                "not a PEM private key)",
                "'***'",
            ) from None
        raise TlsMaterialError(
            key, "a PEM private key (none parses in this file)", str(path)
        ) from None
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm and friends
        raise TlsMaterialError(key, f"a usable PEM private key ({exc})", str(path)) from None


def check_tls_material(params: TlsParameters) -> None:
    """Open every file as the connection will; raise ``TlsMaterialError`` naming the key."""
    if params.ca_certs is not None:
        path = Path(params.ca_certs)
        _read("ca_certs", path, "a readable PEM file of CA certificates")
        try:
            ssl.create_default_context().load_verify_locations(cafile=str(path))
        except ssl.SSLError as exc:
            raise TlsMaterialError(
                "ca_certs", f"a PEM file of CA certificates ({exc.reason or exc})", str(path)
            ) from None
    if params.certfile is None:
        return
    cert_path = Path(params.certfile)
    cert_pem = _read("certfile", cert_path, "a readable PEM client certificate")
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        raise TlsMaterialError(
            "certfile", "a PEM client certificate (no certificate parses in it)", str(cert_path)
        ) from None
    if params.keyfile is not None:
        key_key, key_path = "keyfile", Path(params.keyfile)
        key_pem = _read("keyfile", key_path, "a readable PEM private key")
    else:
        key_key, key_path, key_pem = "certfile", cert_path, cert_pem
        if b"PRIVATE KEY-----" not in cert_pem:
            raise TlsMaterialError(
                "keyfile", f"the client certificate's private key ({cert_path} holds none)", None
            )
    private = _load_key(key_pem, key_key, key_path, params.keyfile_password)
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*raw) != cert.public_key().public_bytes(*raw):
        raise TlsMaterialError(
            key_key,
            f"the private key of the certificate in {cert_path} (this key belongs to another)",
            str(key_path),
        )
    try:  # what OpenSSL itself will load at connect time
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_cert_chain(str(cert_path), params.keyfile, params.keyfile_password)
    except (ssl.SSLError, OSError) as exc:
        raise TlsMaterialError(
            "certfile", f"a certificate and key OpenSSL accepts ({exc})", str(cert_path)
        ) from None


def make_ssl_context(
    params: TlsParameters, on_error: Callable[[BaseException], None] | None = None
) -> ssl.SSLContext:
    """The client's context; ``on_error`` hears every TLS error raised on its sockets
    (paho only logs "failed to receive on socket"), so the link can say what it means."""
    context = ssl.create_default_context(cafile=params.ca_certs)
    context.minimum_version = _VERSIONS[params.min_version]
    if params.insecure:
        context.check_hostname = False  # the chain is still verified (CERT_REQUIRED)
    if params.certfile is not None:
        context.load_cert_chain(params.certfile, params.keyfile, params.keyfile_password)
    context.sslsocket_class = _socket_class(params.fingerprint_sha256, on_error)
    return context


def _socket_class(
    pin: str | None, on_error: Callable[[BaseException], None] | None
) -> type[ssl.SSLSocket]:
    def report(exc: BaseException) -> None:
        if on_error is not None:
            on_error(exc)

    class _CheckedSocket(ssl.SSLSocket):
        """Checks the pin after the handshake; reports TLS errors raised on reads/writes."""

        def do_handshake(self, block: bool = False) -> None:
            try:
                super().do_handshake(block)
            except ssl.SSLError as exc:
                report(exc)
                raise
            if pin is None:
                return
            der = self.getpeercert(binary_form=True) or b""
            got = fingerprint_of(der)
            if got != pin:
                self.close()
                mismatch = PinMismatchError(
                    f"the broker's certificate has sha256 fingerprint {_colons(got)}, not the "
                    f"pinned {_colons(pin)} (mqtt.server_fingerprint_sha256); not connecting"
                )
                report(mismatch)
                raise mismatch

        def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
            try:
                return super().recv(buflen, flags)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as exc:
                report(exc)
                raise

        def send(self, data: bytes, flags: int = 0) -> int:  # type: ignore[override]
            try:
                return super().send(data, flags)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as exc:
                report(exc)
                raise

    return _CheckedSocket


# OpenSSL reason codes (ssl.SSLError.reason) -> what they mean for this agent.
_CLIENT_CERT_REFUSED = (
    "the broker refused our client certificate ({reason}): it is not signed by a CA the "
    "broker trusts (mosquitto: cafile), or it has expired or been revoked; check mqtt.certfile"
)
_HINTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the broker requires a client certificate "
    "(mosquitto: require_certificate true): set mqtt.certfile and mqtt.keyfile",
    "TLSV1_ALERT_UNKNOWN_CA": _CLIENT_CERT_REFUSED,
    "SSLV3_ALERT_BAD_CERTIFICATE": _CLIENT_CERT_REFUSED,
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": _CLIENT_CERT_REFUSED,
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": _CLIENT_CERT_REFUSED,
    "SSLV3_ALERT_CERTIFICATE_REVOKED": _CLIENT_CERT_REFUSED,
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the TLS handshake failed ({reason}): the broker may "
    "require a client certificate (mqtt.certfile) or share no cipher with us",
    "CERTIFICATE_VERIFY_FAILED": "the broker's certificate is not trusted ({detail}): "
    "check mqtt.ca_certs (and that mqtt.host is a name the certificate holds)",
    "WRONG_VERSION_NUMBER": "the broker does not speak TLS on this port ({reason}): "
    "use its TLS port, or set mqtt.tls: false",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the broker and this agent share no TLS version "
    "({reason}): check mqtt.tls_version and the broker's tls_version",
    "UNSUPPORTED_PROTOCOL": "the broker and this agent share no TLS version "
    "({reason}): check mqtt.tls_version and the broker's tls_version",
}


def explain_tls_error(exc: BaseException) -> str:
    """A sentence naming the setting to change; OpenSSL's own words when unknown."""
    if isinstance(exc, PinMismatchError):
        return str(exc.args[0])  # OSError's str() of one argument shows a tuple
    reason = str(getattr(exc, "reason", "") or "")
    detail = str(getattr(exc, "verify_message", "") or reason or exc)
    hint = _HINTS.get(reason)
    if hint is None:
        return f"TLS error: {exc}"
    return hint.format(reason=reason.lower().replace("_", " "), detail=detail)


def speaks_tls(host: str, port: int, timeout: float = 2.0) -> bool:
    """Does ``host:port`` answer a TLS handshake? (Any alert from the peer counts: a
    listener that wants a client certificate refuses ours, but it is speaking TLS.)"""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.do_handshake()
            return True
    except ssl.SSLError as exc:
        return "ALERT" in str(exc.reason or "")
    except OSError:
        return False
