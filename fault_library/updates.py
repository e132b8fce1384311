"""New versions derived from the current one: an engineer's recording added, or re-sharded.

Both start from the current version's kept raw embeddings and rows, never from the
recordings it was built from (those may be long gone from the gateway), and publish a new
version atomically; the old one stays on disk and keeps serving until the switch. The
whole read-derive-publish runs under the root's write lock so two concurrent ``library
add`` runs cannot publish over each other's signatures.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faultline.encoders.geometry import BearingGeometry
from faultline.encoders.signals import Window
from faultline.fault_library.builder import (
    Encoder,
    LibraryBuildError,
    SignatureSource,
    embed_windows,
)
from faultline.fault_library.catalog import sha256_file
from faultline.fault_library.index import DEFAULT_LARGE_FACTORY
from faultline.fault_library.labels import parse_fault_label
from faultline.fault_library.library import (
    FaultLibrary,
    LibraryError,
    open_current,
    publish_version,
)
from faultline.fault_library.novelty import CALIBRATION_KEY, calibrate_library
from faultline.fault_library.recordings import RecordingError, iter_windows, read_recording
from faultline.fault_library.shards import owner
from faultline.fault_library.signing import SigningKey
from faultline.fault_library.store import StoreError
from faultline.fault_library.versions import new_build_dir, write_lock
from faultline.fault_library.writer import resolve_shards, write_version

__all__ = [
    "Contents",
    "DerivedVersion",
    "add_recording",
    "add_windows",
    "derive_version",
    "export_all",
    "reshard",
]

Contents = tuple[npt.NDArray[np.float32], list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class DerivedVersion:
    path: Path
    parent: str
    added: int
    """Signatures added (windows x views)."""
    moved: int
    """Existing signatures now owned by another shard."""
    total: int
    shards: tuple[str, ...]


def derive_version(
    root: str | Path,
    base: FaultLibrary,
    *,
    extra_vectors: Mapping[str, npt.NDArray[np.float32]] | None = None,
    extra_rows: Sequence[Mapping[str, Any]] = (),
    shards: int | Sequence[str] | None = None,
    action: Mapping[str, Any],
    contents: Mapping[str, Contents] | None = None,
    progress: bool = False,
    signer: SigningKey | None = None,
) -> DerivedVersion:
    """Publish ``base`` + ``extra_rows`` (numbered from 0 per view within ``extra_vectors``)
    over ``shards`` (default: ``base``'s). Indexes are rebuilt from the raw vectors with the
    base's index policy, so an IVF-PQ shard is retrained on its new contents."""
    names = base.all_shards if shards is None else resolve_shards(shards)
    contents = contents if contents is not None else export_all(base)
    vectors: dict[str, npt.NDArray[np.float32]] = {}
    rows: list[dict[str, Any]] = []
    moved = total = 0
    for view, (old, old_rows) in contents.items():
        for position, row in enumerate(old_rows):
            rows.append({**row, "row_index": position})
            moved += owner(row["id"], base.all_shards) != owner(row["id"], names)
        total += len(old_rows)
        extra = (extra_vectors or {}).get(view)
        vectors[view] = old if extra is None or not len(extra) else np.concatenate([old, extra])
    for new in extra_rows:
        offset = len(contents[new["view"]][1])
        rows.append({**new, "row_index": offset + int(new["row_index"])})
    source = dict(base.manifest.get("source", {}))
    if extra_rows:
        # New signatures (a new label, an enrolled asset) move the per-class novelty
        # thresholds: measure them again rather than inherit the parent's.
        calibration = calibrate_library(vectors, rows)
        source.pop(CALIBRATION_KEY, None)
        if calibration:
            source[CALIBRATION_KEY] = calibration
    policy = base.manifest.get("index_policy") or {}
    source["parent_version"] = base.version
    history = list(source.get("history", []))
    history.append(
        {
            **action,
            "at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "parent": base.version,
        }
    )
    source["history"] = history
    build_dir: Path | None = None
    try:
        build_dir = new_build_dir(root)
        write_version(
            build_dir,
            model_id=base.model_id,
            model_sha256=base.manifest["encoder"].get("model_sha256"),
            vectors=vectors,
            rows=rows,
            source=source,
            shards=names,
            factory=policy.get("factory"),
            large_factory=policy.get("large_factory") or DEFAULT_LARGE_FACTORY,
            nprobe=policy.get("nprobe"),
            progress=progress,
        )
        path = publish_version(root, build_dir, expected_model_id=base.model_id, signer=signer)
    except (LibraryError, StoreError, OSError, ValueError) as exc:
        raise LibraryBuildError(f"new version abandoned: {exc}") from exc
    finally:
        if build_dir is not None and build_dir.exists():
            shutil.rmtree(build_dir, ignore_errors=True)
    return DerivedVersion(
        path, base.version, len(extra_rows), moved, total + len(extra_rows), names
    )


def add_recording(
    root: str | Path,
    path: str | Path,
    encoder: Encoder,
    *,
    label: str,
    asset: str | None = None,
    note: str | None = None,
    record_id: str | None = None,
    fs: float | None = None,
    rpm: float | None = None,
    geometry: BearingGeometry | None = None,
    channel: str = "DE",
    fault_size_in: float | None = None,
    load_hp: int | None = None,
    window_s: float = 1.0,
    hop_s: float = 0.5,
    start_s: float = 0.0,
    stop_s: float | None = None,
    progress: bool = False,
    signer: SigningKey | None = None,
) -> DerivedVersion:
    """Publish current + the windows of one recording labelled ``label``.

    Refused, with nothing published: an unknown label, a recording that cannot be read or
    is shorter than one window, and windows already in the library (same file bytes, same
    window), whatever the file is called now.
    """
    try:
        label = parse_fault_label(label)
    except ValueError as exc:
        raise LibraryBuildError(str(exc)) from None
    path = Path(path)
    try:
        rec = read_recording(path, fs=fs, rpm=rpm, geometry=geometry, channel=channel)
        windows = list(
            iter_windows(
                rec,
                f"add:{path.stem}",
                window_s=window_s,
                hop_s=hop_s,
                start_s=start_s,
                stop_s=stop_s,
            )
        )
        source_sha = sha256_file(path)
    except (RecordingError, OSError, ValueError) as exc:
        text = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        raise LibraryBuildError(f"cannot be used: {text}") from None
    if not windows:
        raise LibraryBuildError(
            f"{path}: no whole {window_s} s window between {start_s} s and "
            f"{stop_s if stop_s is not None else f'{rec.duration_s:.2f}'} s"
        )
    used_geometry = geometry or rec.geometry
    source = SignatureSource(
        record_id=record_id or path.stem,
        source=path.name,
        source_sha256=source_sha,
        label=label,
        dataset=f"asset {asset}" if asset else "field recording",
        fault_size_in=fault_size_in,
        load_hp=load_hp,
        bearing=used_geometry.name if used_geometry is not None else None,
        channel=channel,
        note=note,
        asset=asset,
    )
    return add_windows(
        root,
        windows,
        encoder,
        source,
        rpm=rec.rpm,
        window_s=window_s,
        progress=progress,
        action={"file": path.name, "segment_s": [start_s, stop_s]},
        signer=signer,
    )


def add_windows(
    root: str | Path,
    windows: Sequence[Window],
    encoder: Encoder,
    source: SignatureSource,
    *,
    rpm: float | None,
    window_s: float,
    progress: bool = False,
    action: Mapping[str, Any] | None = None,
    signer: SigningKey | None = None,
) -> DerivedVersion:
    """Publish current + ``windows`` as signatures citing ``source``.

    The common path of ``library add`` (a file) and ``assets enroll`` (windows collected
    live from the broker). Windows already in the library (same source bytes and offset)
    are refused, with nothing published.
    """
    label = source.label
    vectors, rows = embed_windows(
        windows, encoder, source, rpm=rpm, window_s=window_s, first_row={}
    )
    with write_lock(root), open_current(root, expected_model_id=encoder.model_id) as base:
        contents = export_all(base)
        _refuse_duplicates(base.version, contents, rows, source.source)
        return derive_version(
            root,
            base,
            extra_vectors=vectors,
            extra_rows=rows,
            contents=contents,
            progress=progress,
            signer=signer,
            action={
                "action": "add",
                "sha256": source.source_sha256,
                "record_id": source.record_id,
                "label": label,
                "asset": source.asset,
                "note": source.note,
                "windows": len(windows),
                **(action or {}),
            },
        )


def reshard(
    root: str | Path,
    shards: int | Sequence[str],
    *,
    expected_model_id: str | None = None,
    progress: bool = False,
    signer: SigningKey | None = None,
) -> DerivedVersion:
    """Publish the current signatures spread over ``shards`` (moves ~1/N per shard added)."""
    names = resolve_shards(shards)
    with write_lock(root), open_current(root, expected_model_id=expected_model_id) as base:
        return derive_version(
            root,
            base,
            shards=names,
            progress=progress,
            signer=signer,
            action={"action": "reshard", "from": list(base.all_shards), "to": list(names)},
        )


def export_all(base: FaultLibrary) -> dict[str, Contents]:
    """Every view's raw vectors and rows (all shards)."""
    return {view: base.export(view) for view in base.views}


def _refuse_duplicates(
    version: str,
    contents: Mapping[str, Contents],
    rows: Sequence[Mapping[str, Any]],
    path: Path | str,
) -> None:
    known_ids: set[str] = set()
    known_windows: dict[tuple[str, float, float, str], Mapping[str, Any]] = {}
    for _, existing in contents.values():
        for row in existing:
            known_ids.add(row["id"])
            known_windows[_window_key(row)] = row
    clashes = [r for r in rows if r["id"] in known_ids or _window_key(r) in known_windows]
    if clashes:
        first = known_windows.get(_window_key(clashes[0]))
        where = (
            f" (e.g. its window at {clashes[0]['offset_s']} s, {clashes[0]['view']} view, is "
            "signature "
            f"{first['id']}, record {first['record_id']})"
            if first is not None
            else f" (e.g. signature {clashes[0]['id']})"
        )
        raise LibraryBuildError(
            f"{path}: {len(clashes)} of {len(rows)} signatures are already in library version "
            f"{version}: same file bytes and window{where}; nothing was added"
        )


def _window_key(row: Mapping[str, Any]) -> tuple[str, float, float, str]:
    return (
        str(row["source_sha256"]),
        round(float(row["offset_s"]), 6),
        round(float(row["window_s"]), 6),
        str(row["view"]),
    )
