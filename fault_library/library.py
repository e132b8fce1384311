"""A verified, versioned fault library on disk, and the atomic switch between versions.

A version is an immutable directory::

    index-window.faiss  index-spectrum.faiss  signatures.sqlite  manifest.json

``manifest.json`` records the sha256 and size of every other file, the encoder's model id,
and per view the index kind, factory, dimension, metric and count. ``FaultLibrary.open``
checks all of it before serving, so a flipped bit, a truncated copy or a library built by
another encoder (whose vectors would be meaningless to ours) is refused with the file named.

A library root holds versions and a ``current`` symlink::

    <root>/versions/<version>/   <root>/current -> versions/<version>

Builds go to ``versions/.tmp-<uuid>``, are fsynced and verified, renamed to their final
name and only then is ``current`` replaced (tmp symlink + ``os.replace``, atomic on POSIX).
A crash at any point leaves ``current`` on a complete version.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from faultline.fault_library.index import VectorIndex
from faultline.fault_library.store import SignatureStore, StoreError

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "STORE_FILE",
    "FaultLibrary",
    "LibraryError",
    "Neighbour",
    "current_version",
    "index_file",
    "list_versions",
    "new_build_dir",
    "open_current",
    "publish_version",
    "remove_stale_builds",
    "write_manifest",
    "write_version",
]

FORMAT_VERSION: Final = 1
MANIFEST: Final = "manifest.json"
STORE_FILE: Final = "signatures.sqlite"
_CURRENT: Final = "current"
_VERSIONS: Final = "versions"
_TMP_PREFIX: Final = ".tmp-"


class LibraryError(RuntimeError):
    """A library version cannot be used; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class Neighbour:
    id: str
    label: str
    score: float


def index_file(view: str) -> str:
    return f"index-{view}.faiss"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(
    version_dir: Path,
    *,
    model_id: str,
    indexes: Mapping[str, VectorIndex],
    label_counts: Mapping[str, Mapping[str, int]],
    source: Mapping[str, Any],
    model_sha256: str | None = None,
) -> dict[str, Any]:
    """Hash every file in ``version_dir`` into a new manifest (the last file written)."""
    files = sorted(p for p in version_dir.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "encoder": {"model_id": model_id, "model_sha256": model_sha256},
        "views": {
            view: {
                "file": index_file(view),
                "kind": ix.kind,
                "factory": ix.factory,
                "describe": ix.describe(),
                "dim": ix.dim,
                "metric": ix.metric,
                "count": ix.ntotal,
                "nprobe": ix.nprobe,
                "label_counts": dict(label_counts.get(view, {})),
            }
            for view, ix in indexes.items()
        },
        "store": STORE_FILE,
        "files": {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in files},
        "source": dict(source),
    }
    path = version_dir / MANIFEST
    with path.open("w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    return manifest


def write_version(
    version_dir: Path,
    *,
    model_id: str,
    indexes: Mapping[str, VectorIndex],
    rows: Iterable[Mapping[str, Any]],
    source: Mapping[str, Any],
    model_sha256: str | None = None,
    meta: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write store, indexes and manifest of one version into an empty ``version_dir``.

    ``rows`` are signature rows whose ``(view, row_index)`` match the indexes' rows. The
    store is closed before hashing so no journal or cache is left unhashed.
    """
    store = SignatureStore(version_dir / STORE_FILE)
    try:
        batch: list[Mapping[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= 5_000:
                store.add_many(batch)
                batch.clear()
        store.add_many(batch)
        for key, value in {"model_id": model_id, **(meta or {})}.items():
            store.set_meta(key, value)
        for view, ix in indexes.items():
            if store.count(view) != ix.ntotal:
                raise LibraryError(
                    f"{STORE_FILE}: {store.count(view)} {view} rows for {ix.ntotal} vectors"
                )
            store.labels(view)  # proves row_index is exactly 0..n-1
        label_counts = {view: store.label_counts(view) for view in indexes}
    finally:
        store.close()
    for view, ix in indexes.items():
        ix.save(version_dir / index_file(view))
    return write_manifest(
        version_dir,
        model_id=model_id,
        indexes=indexes,
        label_counts=label_counts,
        source=source,
        model_sha256=model_sha256,
    )


def _read_manifest(version_dir: Path) -> tuple[dict[str, Any], str]:
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
            f"(this build reads {FORMAT_VERSION})"
        )
    for key, kind in (("created_at", str), ("encoder", dict), ("views", dict), ("files", dict)):
        if not isinstance(manifest.get(key), kind):
            raise LibraryError(f"{MANIFEST}: missing or malformed key {key!r}")
    for view, spec in manifest["views"].items():
        if not (
            isinstance(spec, dict)
            and isinstance(spec.get("dim"), int)
            and isinstance(spec.get("count"), int)
        ):
            raise LibraryError(f"{MANIFEST}: view {view!r} needs integer 'dim' and 'count'")
    return manifest, hashlib.sha256(raw).hexdigest()


def _verify_files(version_dir: Path, manifest: Mapping[str, Any]) -> None:
    files: Mapping[str, Any] = manifest["files"]
    required = [STORE_FILE, *(index_file(v) for v in manifest["views"])]
    for name in required:
        if name not in files:
            raise LibraryError(f"{MANIFEST}: does not list {name}")
    for name, entry in files.items():
        if Path(name).name != name or name in (".", ".."):
            raise LibraryError(f"{MANIFEST}: file entry {name!r} is not a plain file name")
        try:
            expected_bytes, expected_sha = int(entry["bytes"]), str(entry["sha256"])
        except (KeyError, TypeError, ValueError):
            raise LibraryError(f"{MANIFEST}: entry for {name} needs 'bytes' and 'sha256'") from None
        path = version_dir / name
        if not path.is_file():
            raise LibraryError(f"{name}: missing (listed in {MANIFEST})")
        size = path.stat().st_size
        if size != expected_bytes:
            what = "truncated" if size < expected_bytes else "size mismatch"
            raise LibraryError(
                f"{name}: {what} (manifest {expected_bytes} bytes, file {size} bytes)"
            )
        actual = _sha256(path)
        if actual != expected_sha:
            raise LibraryError(
                f"{name}: sha256 mismatch (manifest {expected_sha[:12]}..., file {actual[:12]}...)"
            )


class FaultLibrary:
    """An opened, verified version: FAISS indexes per view + the signature store."""

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        manifest_sha256: str,
        indexes: dict[str, VectorIndex],
        store: SignatureStore,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self._indexes = indexes
        self._store = store
        self._labels: dict[str, npt.NDArray[np.str_]] = {v: store.labels(v) for v in indexes}
        self._ids: dict[str, npt.NDArray[np.str_]] = {v: store.ids(v) for v in indexes}
        # Build time first so names sort by age; the manifest hash tells same-second builds
        # apart and changes if anything in the version does.
        stamp = str(manifest["created_at"]).replace("-", "").replace(":", "")
        self.version = f"{stamp}-{manifest_sha256[:8]}"

    @classmethod
    def open(cls, path: str | Path, *, expected_model_id: str | None = None) -> FaultLibrary:
        """Verify every checksum and the encoder, then load; raise ``LibraryError`` if not."""
        version_dir = Path(path)
        if not version_dir.is_dir():
            raise LibraryError(f"{version_dir}: not a library version directory")
        manifest, manifest_sha = _read_manifest(version_dir)
        model_id = manifest["encoder"].get("model_id")
        if expected_model_id is not None and model_id != expected_model_id:
            raise LibraryError(
                f"{MANIFEST}: built with encoder {model_id!r}, but this agent runs "
                f"{expected_model_id!r}; rebuild the library with the current encoder"
            )
        _verify_files(version_dir, manifest)
        indexes: dict[str, VectorIndex] = {}
        for view, spec in manifest["views"].items():
            name = index_file(view)
            try:
                ix = VectorIndex.load(version_dir / name, factory=spec.get("factory"))
            except (RuntimeError, ValueError) as exc:
                raise LibraryError(f"{name}: cannot be read by FAISS ({exc})") from None
            if ix.dim != spec["dim"] or ix.ntotal != spec["count"]:
                raise LibraryError(
                    f"{name}: holds {ix.ntotal} x {ix.dim}, manifest says "
                    f"{spec['count']} x {spec['dim']}"
                )
            indexes[view] = ix
        try:
            store = SignatureStore(version_dir / STORE_FILE, readonly=True)
        except (StoreError, sqlite3.Error) as exc:
            raise LibraryError(f"{STORE_FILE}: cannot be opened ({exc})") from None
        try:
            for view, ix in indexes.items():
                stored = store.count(view)
                if stored != ix.ntotal:
                    raise LibraryError(
                        f"{STORE_FILE}: {stored} {view} signatures, but {index_file(view)} "
                        f"holds {ix.ntotal}"
                    )
            return cls(version_dir, manifest, manifest_sha, indexes, store)
        except (StoreError, sqlite3.Error) as exc:
            store.close()
            raise LibraryError(f"{STORE_FILE}: unusable ({exc})") from None
        except LibraryError:
            store.close()
            raise

    # -- properties ---------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return str(self.manifest["encoder"]["model_id"])

    @property
    def views(self) -> tuple[str, ...]:
        return tuple(self._indexes)

    def index(self, view: str) -> VectorIndex:
        try:
            return self._indexes[view]
        except KeyError:
            raise ValueError(f"no {view!r} index; this library has {self.views}") from None

    # -- queries ------------------------------------------------------------------------
    def search(self, view: str, vectors: npt.ArrayLike, k: int) -> list[list[Neighbour]]:
        """Top-``k`` neighbours per query vector. In-memory arrays only: no SQL here."""
        scores, rows = self.index(view).search(vectors, k)
        labels, ids = self._labels[view], self._ids[view]
        out: list[list[Neighbour]] = []
        for score_row, index_row in zip(scores.tolist(), rows.tolist(), strict=True):
            out.append(
                [
                    Neighbour(str(ids[r]), str(labels[r]), float(s))
                    for s, r in zip(score_row, index_row, strict=True)
                    if r >= 0
                ]
            )
        return out

    def describe(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """Full signature rows for reports, in the order asked."""
        return self._store.get(ids)

    def search_text(self, query: str, limit: int = 10) -> list[dict[str, Any]]:
        return self._store.search_text(query, limit)

    def info(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "path": str(self.path),
            "created_at": self.manifest["created_at"],
            "model_id": self.model_id,
            "views": {
                view: {
                    "index": ix.describe(),
                    "kind": ix.kind,
                    "factory": ix.factory,
                    "dim": ix.dim,
                    "count": ix.ntotal,
                    "label_counts": self._store.label_counts(view),
                }
                for view, ix in self._indexes.items()
            },
            "source": self.manifest.get("source", {}),
            "files": {name: str(self.path / name) for name in self.manifest["files"]},
        }

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> FaultLibrary:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- library root: versions + current ------------------------------------------------------
def new_build_dir(root: str | Path) -> Path:
    """A fresh hidden directory under ``<root>/versions`` that nothing serves from."""
    versions = Path(root) / _VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    path = versions / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
    path.mkdir()
    return path


def publish_version(
    root: str | Path, built_dir: str | Path, *, expected_model_id: str | None = None
) -> Path:
    """Verify ``built_dir``, move it to ``versions/<version>`` and point ``current`` at it."""
    root, built_dir = Path(root), Path(built_dir)
    with FaultLibrary.open(built_dir, expected_model_id=expected_model_id) as lib:
        version = lib.version
    for child in built_dir.iterdir():  # data is durable before any name points at it
        with child.open("rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(built_dir)
    versions = root / _VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    final = versions / version
    if final.exists():
        raise LibraryError(f"{final}: version already exists")
    os.rename(built_dir, final)
    _fsync_dir(versions)
    tmp_link = root / f"{_TMP_PREFIX}{_CURRENT}-{uuid.uuid4().hex}"
    os.symlink(Path(_VERSIONS) / version, tmp_link)
    os.replace(tmp_link, root / _CURRENT)
    _fsync_dir(root)
    return final


def current_version(root: str | Path) -> str | None:
    link = Path(root) / _CURRENT
    if not link.is_symlink():
        return None
    return Path(os.readlink(link)).name


def list_versions(root: str | Path) -> list[str]:
    """Published versions, oldest first (names start with the build time)."""
    versions = Path(root) / _VERSIONS
    if not versions.is_dir():
        return []
    return sorted(p.name for p in versions.iterdir() if p.is_dir() and not p.name.startswith("."))


def remove_stale_builds(root: str | Path) -> list[Path]:
    """Delete ``.tmp-*`` leftovers of builds that crashed (never served from)."""
    versions = Path(root) / _VERSIONS
    stale = sorted(versions.glob(f"{_TMP_PREFIX}*")) if versions.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def open_current(root: str | Path, *, expected_model_id: str | None = None) -> FaultLibrary:
    link = Path(root) / _CURRENT
    if not link.is_symlink():
        raise LibraryError(f"{link}: no published library version (run `faultline library build`)")
    return FaultLibrary.open(link.resolve(), expected_model_id=expected_model_id)
