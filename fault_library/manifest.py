"""The manifest of a library version: what is in it and the checksum of every file.

A version directory::

    manifest.json
    shards/<shard>/index-<view>.faiss     FAISS index over the shard's rows of <view>
    shards/<shard>/vectors-<view>.npy     the same rows' raw float32 embeddings
    shards/<shard>/signatures.sqlite      the shard's signature rows (+ FTS5)

One SQLite file per shard rather than one shared file with a shard column: a shard is the
unit a gateway holds and a fleet will hand out, so it must be complete on its own (rows,
vectors, index), verifiable without the others, and a gateway serving two shards of ten
must not download, hash or page in the other eight's rows. FAISS row numbers are per shard
anyway, so ``(view, row_index)`` stays the store's unique key. The price: full-text ranks
(bm25) are computed per shard, with that shard's word statistics, before being merged.

Raw embeddings are kept so that adding signatures, re-sharding or retraining an IVF-PQ
index derive a new version from this one without re-reading any recording.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from faultline.fault_library.shards import SCHEME, check_shard_names

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "SHARDS_DIR",
    "STORE_FILE",
    "LibraryError",
    "VerifyReport",
    "index_file",
    "load_manifest",
    "sha256_path",
    "shard_dir",
    "vectors_file",
    "verify_shard_files",
    "write_manifest",
]

FORMAT_VERSION: Final = 2
MANIFEST: Final = "manifest.json"
STORE_FILE: Final = "signatures.sqlite"
SHARDS_DIR: Final = "shards"


class LibraryError(RuntimeError):
    """A library version cannot be used; the message names the file and the problem."""


def index_file(view: str) -> str:
    return f"index-{view}.faiss"


def vectors_file(view: str) -> str:
    return f"vectors-{view}.npy"


def shard_dir(shard: str) -> str:
    """Path of a shard's directory relative to the version directory."""
    return f"{SHARDS_DIR}/{shard}"


def sha256_path(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(
    version_dir: Path,
    *,
    model_id: str,
    model_sha256: str | None,
    views: Mapping[str, Mapping[str, Any]],
    shards: Mapping[str, Mapping[str, Any]],
    source: Mapping[str, Any],
    index_policy: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Hash every file of every shard and write the manifest (the last file of a build).

    ``views``: per view ``dim``, ``count``, ``label_counts`` (whole library);
    ``shards``: per shard ``views`` (per-shard count, index kind, factory and why);
    ``index_policy``: how indexes were chosen, so a derived version chooses the same way.
    """
    shard_entries: dict[str, Any] = {}
    for name, spec in shards.items():
        directory = version_dir / shard_dir(name)
        files = sorted(p for p in directory.iterdir() if p.is_file())
        shard_entries[name] = {
            "dir": shard_dir(name),
            "views": dict(spec["views"]),
            "files": {p.name: {"sha256": sha256_path(p), "bytes": p.stat().st_size} for p in files},
        }
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "encoder": {"model_id": model_id, "model_sha256": model_sha256},
        "metric": "inner_product",
        "views": {view: dict(spec) for view, spec in views.items()},
        "sharding": {
            "scheme": SCHEME,
            "key": "sha256('<shard>|<signature id>'), highest first 8 bytes owns",
            "shards": list(shards),
        },
        "shards": shard_entries,
        "index_policy": dict(index_policy or {}),
        "source": dict(source),
    }
    path = version_dir / MANIFEST
    with path.open("w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    return manifest


def load_manifest(version_dir: Path) -> tuple[dict[str, Any], str]:
    """Parse and check the manifest's shape; returns it and its own sha256."""
    path = version_dir / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LibraryError(f"{MANIFEST}: missing in {version_dir}") from None
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LibraryError(f"{MANIFEST}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise LibraryError(f"{MANIFEST}: expected a JSON object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise LibraryError(
            f"{MANIFEST}: format_version {manifest.get('format_version')!r} is not supported "
            f"(this build reads {FORMAT_VERSION}); rebuild with `faultline library build`"
        )
    for key, kind in (
        ("created_at", str),
        ("encoder", dict),
        ("views", dict),
        ("sharding", dict),
        ("shards", dict),
    ):
        if not isinstance(manifest.get(key), kind):
            raise LibraryError(f"{MANIFEST}: missing or malformed key {key!r}")
    for view, spec in manifest["views"].items():
        if not (
            isinstance(spec, dict)
            and isinstance(spec.get("dim"), int)
            and isinstance(spec.get("count"), int)
        ):
            raise LibraryError(f"{MANIFEST}: view {view!r} needs integer 'dim' and 'count'")
    if manifest["sharding"].get("scheme") != SCHEME:
        raise LibraryError(
            f"{MANIFEST}: sharding scheme {manifest['sharding'].get('scheme')!r} is not "
            f"{SCHEME!r}; owners of ids cannot be computed"
        )
    try:
        names = check_shard_names(manifest["sharding"].get("shards") or ())
    except ValueError as exc:
        raise LibraryError(f"{MANIFEST}: {exc}") from None
    if sorted(names) != sorted(manifest["shards"]):
        raise LibraryError(f"{MANIFEST}: 'sharding.shards' and 'shards' list different shards")
    for name in names:
        _check_shard_entry(manifest, name)
    return manifest, hashlib.sha256(raw).hexdigest()


def _check_shard_entry(manifest: Mapping[str, Any], name: str) -> None:
    entry = manifest["shards"][name]
    if not isinstance(entry, dict) or entry.get("dir") != shard_dir(name):
        raise LibraryError(f"{MANIFEST}: shard {name!r} must live in {shard_dir(name)!r}")
    views, files = entry.get("views"), entry.get("files")
    if not isinstance(views, dict) or not isinstance(files, dict):
        raise LibraryError(f"{MANIFEST}: shard {name!r} needs 'views' and 'files' objects")
    if set(views) != set(manifest["views"]):
        raise LibraryError(f"{MANIFEST}: shard {name!r} does not hold every view")
    for view, spec in views.items():
        if not (isinstance(spec, dict) and isinstance(spec.get("count"), int)):
            raise LibraryError(f"{MANIFEST}: shard {name!r} view {view!r} needs integer 'count'")
    required = [STORE_FILE, *(f(v) for v in views for f in (index_file, vectors_file))]
    for file_name in required:
        if file_name not in files:
            raise LibraryError(f"{MANIFEST}: does not list {shard_dir(name)}/{file_name}")
    for file_name in files:
        if Path(file_name).name != file_name or file_name in (".", ".."):
            raise LibraryError(f"{MANIFEST}: file entry {file_name!r} is not a plain file name")


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What a verification covered, for ``library verify`` to print."""

    files: int
    bytes: int


def verify_shard_files(
    version_dir: Path, manifest: Mapping[str, Any], shards: Iterable[str]
) -> VerifyReport:
    """Check size and sha256 of every file of ``shards``; raise naming the first bad one."""
    n_files = n_bytes = 0
    for name in shards:
        entry = manifest["shards"][name]
        for file_name, spec in entry["files"].items():
            rel = f"{entry['dir']}/{file_name}"
            try:
                expected_bytes, expected_sha = int(spec["bytes"]), str(spec["sha256"])
            except (KeyError, TypeError, ValueError):
                raise LibraryError(
                    f"{MANIFEST}: entry for {rel} needs 'bytes' and 'sha256'"
                ) from None
            path = version_dir / rel
            if not path.is_file():
                raise LibraryError(f"{rel}: missing (listed in {MANIFEST})")
            size = path.stat().st_size
            if size != expected_bytes:
                what = "truncated" if size < expected_bytes else "size mismatch"
                raise LibraryError(
                    f"{rel}: {what} (manifest {expected_bytes} bytes, file {size} bytes)"
                )
            actual = sha256_path(path)
            if actual != expected_sha:
                raise LibraryError(
                    f"{rel}: sha256 mismatch (manifest {expected_sha[:12]}..., "
                    f"file {actual[:12]}...)"
                )
            n_files += 1
            n_bytes += size
    return VerifyReport(files=n_files, bytes=n_bytes)
