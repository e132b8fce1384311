"""Ed25519 signatures of library versions and model manifests, and the keys that trust them.

What is signed is a short statement: the sha256 of each file at the top of a version
directory (``manifest.json``, which itself pins the sha256 and size of every shard file,
and ``knowledge.sqlite``), or of one model manifest (which pins its model files). So one
signature covers every byte the agent will serve, and verifying it costs a hash of the
manifest, not of the shards (``FaultLibrary.open`` hashes those against the manifest anyway).

The statement and its signature live beside what they sign, in ``signature.json`` (a
version) or ``<manifest>.sig`` (a model manifest)::

    {"schema": "faultline.signature/1", "algorithm": "ed25519", "key_id": "3f0c...",
     "signed_at": "2026-12-04T10:00:00Z", "files": {"manifest.json": "<sha256>", ...},
     "signature": "<base64 of the signature over the canonical JSON of the other keys>"}

Keys are PEM files: the private key (PKCS#8, mode 0600) stays with whoever builds
libraries; gateways hold only public keys (``library.trusted_keys``). A ``key_id`` is the
first 16 hex digits of the sha256 of the raw 32-byte public key, so a refusal can say which
key signed and which keys are trusted. Rotation: trust old and new public keys together,
sign new versions with the new key, then drop the old key once nothing signed by it is
served (docs/SECURITY.md).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "SCHEMA",
    "SIGNATURE_FILE",
    "SignatureError",
    "SigningKey",
    "Trust",
    "generate_keypair",
    "key_id",
    "load_public_key",
    "sign_file",
    "sign_version",
    "signature_path",
    "verify_file",
    "verify_version",
]

SCHEMA: Final = "faultline.signature/1"
SIGNATURE_FILE: Final = "signature.json"
_ALGORITHM: Final = "ed25519"
_MAX_SIGNATURE_BYTES: Final = 64 * 1024


class SignatureError(ValueError):
    """Unsigned, signed by an untrusted key, or not matching what it covers."""


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A private key read from its PEM file (never logged)."""

    private: Ed25519PrivateKey = field(repr=False)
    path: Path

    @property
    def key_id(self) -> str:
        return key_id(self.private.public_key())

    @classmethod
    def load(cls, path: str | Path) -> SigningKey:
        where = Path(path)
        try:
            data = where.read_bytes()
        except OSError as exc:
            raise SignatureError(f"{where}: cannot read signing key ({exc.strerror})") from None
        try:
            key = serialization.load_pem_private_key(data, None)
        except (ValueError, TypeError) as exc:
            raise SignatureError(f"{where}: not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError(f"{where}: not an ed25519 key")
        return cls(key, where)


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    where = Path(path)
    try:
        data = where.read_bytes()
    except OSError as exc:
        raise SignatureError(f"{where}: cannot read public key ({exc.strerror})") from None
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{where}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{where}: not an ed25519 public key")
    return key


def generate_keypair(private_path: str | Path, public_path: str | Path) -> str:
    """Write a new key pair (private 0600, never overwritten); returns its key id."""
    private_path, public_path = Path(private_path), Path(public_path)
    for path in (private_path, public_path):
        if path.exists():
            raise SignatureError(f"{path}: exists; not overwriting a key")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key_id(private.public_key())


@dataclass(frozen=True, slots=True)
class Trust:
    """The public keys a gateway trusts, and whether it serves anything unsigned.

    With ``require`` off, a signed version is still checked (a wrong signature is refused)
    and an unsigned one is served; with no keys and ``require`` off, nothing is checked.
    """

    keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    require: bool = False

    @classmethod
    def from_files(cls, paths: Iterable[str | Path], *, require: bool) -> Trust:
        keys = {}
        for path in paths:
            public = load_public_key(path)
            keys[key_id(public)] = public
        if require and not keys:
            raise SignatureError("require_signature is on but no trusted key is configured")
        return cls(keys, require)

    @property
    def active(self) -> bool:
        return self.require or bool(self.keys)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical(statement: Mapping[str, Any]) -> bytes:
    return json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()


def _write_signature(target: Path, files: Mapping[str, str], key: SigningKey) -> Path:
    statement = {
        "schema": SCHEMA,
        "algorithm": _ALGORITHM,
        "key_id": key.key_id,
        "signed_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "files": dict(files),
    }
    signature = base64.b64encode(key.private.sign(_canonical(statement))).decode()
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump({**statement, "signature": signature}, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(target)
    return target


def _top_files(version_dir: Path) -> dict[str, str]:
    return {
        p.name: _sha256(p)
        for p in sorted(version_dir.iterdir())
        if p.is_file() and p.name != SIGNATURE_FILE and not p.name.startswith(".")
    }


def sign_version(version_dir: str | Path, key: SigningKey) -> Path:
    """Sign every file at the top of a version directory (the manifest covers the shards)."""
    directory = Path(version_dir)
    files = _top_files(directory)
    if "manifest.json" not in files:
        raise SignatureError(f"{directory}: no manifest.json to sign")
    return _write_signature(directory / SIGNATURE_FILE, files, key)


def signature_path(manifest: str | Path) -> Path:
    path = Path(manifest)
    return path.with_name(path.name + ".sig")


def sign_file(path: str | Path, key: SigningKey) -> Path:
    """Sign one file (a model manifest) into ``<file>.sig``."""
    target = Path(path)
    return _write_signature(signature_path(target), {target.name: _sha256(target)}, key)


def _read_statement(sig_path: Path, trust: Trust) -> tuple[dict[str, Any], str] | None:
    """The verified statement and its key id; None when unsigned and that is allowed."""
    if not sig_path.is_file():
        if trust.require:
            raise SignatureError(f"unsigned (no {sig_path.name}) and signatures are required")
        return None
    try:
        if sig_path.stat().st_size > _MAX_SIGNATURE_BYTES:
            raise SignatureError(f"{sig_path.name}: larger than {_MAX_SIGNATURE_BYTES} bytes")
        doc = json.loads(sig_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SignatureError(f"{sig_path.name}: unreadable ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise SignatureError(f"{sig_path.name}: not a {SCHEMA} document")
    if doc.get("algorithm") != _ALGORITHM:
        raise SignatureError(f"{sig_path.name}: algorithm {doc.get('algorithm')!r} unsupported")
    signer = str(doc.get("key_id", ""))[:64]
    public = trust.keys.get(signer)
    if public is None:
        known = ", ".join(sorted(trust.keys)) or "none"
        raise SignatureError(f"signed by key {signer!r}, which is not trusted (trusted: {known})")
    statement = {k: v for k, v in doc.items() if k != "signature"}
    try:
        public.verify(
            base64.b64decode(str(doc.get("signature", "")), validate=True), _canonical(statement)
        )
    except (InvalidSignature, ValueError):
        raise SignatureError(
            f"{sig_path.name}: the signature of key {signer} does not verify "
            "(the statement was altered or signed by another key)"
        ) from None
    if not isinstance(statement.get("files"), dict):
        raise SignatureError(f"{sig_path.name}: no 'files' object")
    return statement, signer


def _check_hashes(base: Path, signed: Mapping[str, Any], present: Iterable[str]) -> None:
    for name in present:
        if name not in signed:
            raise SignatureError(f"{name}: present but not covered by the signature")
    for name, expected in signed.items():
        if Path(name).name != name:
            raise SignatureError(f"signed entry {name!r} is not a plain file name")
        path = base / name
        if not path.is_file():
            raise SignatureError(f"{name}: signed but missing")
        if _sha256(path) != expected:
            raise SignatureError(f"{name}: sha256 differs from the signed one (altered)")


def verify_version(version_dir: str | Path, trust: Trust) -> str | None:
    """Check a version's signature against ``trust``; the signer's key id, or None when
    unsigned and allowed. Raises ``SignatureError`` saying what is wrong."""
    if not trust.active:
        return None
    directory = Path(version_dir)
    found = _read_statement(directory / SIGNATURE_FILE, trust)
    if found is None:
        return None
    statement, signer = found
    present = [
        p.name
        for p in directory.iterdir()
        if p.is_file() and p.name != SIGNATURE_FILE and not p.name.startswith(".")
    ]
    if "manifest.json" not in statement["files"]:
        raise SignatureError(f"{SIGNATURE_FILE}: does not cover manifest.json")
    _check_hashes(directory, statement["files"], present)
    return signer


def verify_file(path: str | Path, trust: Trust) -> str | None:
    """Check a model manifest's ``.sig``; the signer's key id, or None (unsigned, allowed)."""
    if not trust.active:
        return None
    target = Path(path)
    found = _read_statement(signature_path(target), trust)
    if found is None:
        return None
    statement, signer = found
    if set(statement["files"]) != {target.name}:
        raise SignatureError(f"{signature_path(target).name}: does not sign {target.name}")
    _check_hashes(target.parent, statement["files"], [target.name])
    return signer
