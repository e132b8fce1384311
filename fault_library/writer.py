"""Write one library version: split the signatures into shards, index, store, manifest.

Every write names its file when it fails (``shards/shard-01/signatures.sqlite: cannot
write (disk I/O error)``), because a full disk otherwise surfaces as an anonymous
``OSError: 12800 requested and 4968 written`` from numpy or a FAISS assertion. Callers
write into a hidden build directory and delete it on any error, so a failed write never
leaves anything that could be served.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faultline.fault_library.index import DEFAULT_LARGE_FACTORY, VectorIndex, choose_index
from faultline.fault_library.manifest import (
    STORE_FILE,
    LibraryError,
    index_file,
    shard_dir,
    vectors_file,
    write_manifest,
)
from faultline.fault_library.shards import check_shard_names, partition, shard_names
from faultline.fault_library.store import SignatureStore, StoreError

__all__ = ["resolve_shards", "write_version"]

log = logging.getLogger(__name__)

_STORE_BATCH = 5_000


def resolve_shards(shards: int | Sequence[str]) -> tuple[str, ...]:
    """``3`` -> ``shard-00..02``; explicit names are checked and kept."""
    try:
        return shard_names(shards) if isinstance(shards, int) else check_shard_names(shards)
    except ValueError as exc:
        raise LibraryError(str(exc)) from None


@contextmanager
def _writing(rel: str) -> Iterator[None]:
    try:
        yield
    except (StoreError, LibraryError):
        raise  # a bad row, not a failed write: its message already says which
    except (OSError, RuntimeError, sqlite3.Error) as exc:
        raise LibraryError(f"{rel}: cannot write ({_short(exc)})") from exc


def _short(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    if (
        "write error" in text and text.endswith(")") and "(" in text
    ):  # FAISS: "... (File too large)"
        return text[text.rindex("(") + 1 : -1]
    return text


def write_version(
    version_dir: Path,
    *,
    model_id: str,
    vectors: Mapping[str, npt.ArrayLike],
    rows: Iterable[Mapping[str, Any]],
    source: Mapping[str, Any],
    shards: int | Sequence[str] = 1,
    factory: str | None = None,
    large_factory: str = DEFAULT_LARGE_FACTORY,
    nprobe: int | None = None,
    model_sha256: str | None = None,
    meta: Mapping[str, str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Write a complete version into the empty ``version_dir``; return its manifest.

    ``vectors[view]`` is ``(n, dim)``, rows L2-normalised; ``rows`` are signature rows whose
    ``(view, row_index)`` give each one's position in ``vectors[view]``. Each row goes to
    the shard that owns its id; within a shard rows keep their relative order.
    """
    names = resolve_shards(shards)
    mats = {view: _matrix(view, v) for view, v in vectors.items()}
    by_view = _rows_by_view(rows, {view: len(m) for view, m in mats.items()})
    owned = {view: partition([r["id"] for r in by_view[view]], names) for view in mats}
    shard_specs: dict[str, dict[str, Any]] = {}
    totals: dict[str, Counter[str]] = {view: Counter() for view in mats}
    for name in names:
        directory = version_dir / shard_dir(name)
        with _writing(shard_dir(name)):
            directory.mkdir(parents=True)
        views: dict[str, Any] = {}
        shard_rows: list[dict[str, Any]] = []
        for view, matrix in mats.items():
            positions = owned[view][name]
            part = np.ascontiguousarray(matrix[positions])
            rel = f"{shard_dir(name)}/"
            with _writing(rel + vectors_file(view)):
                _save_npy(directory / vectors_file(view), part)
            chosen, reason = _choice(len(part), factory, large_factory)
            try:
                ix = VectorIndex.build(
                    part, factory=chosen, nprobe=nprobe, progress=progress, seed=0
                )
            except (ValueError, RuntimeError) as exc:  # FAISS reports bad factories as RuntimeError
                raise LibraryError(
                    f"{rel}{index_file(view)}: cannot build {chosen}: {exc}"
                ) from None
            line = reason if ix.kind == "exact" else f"{ix.describe()} ({reason})"
            log.info("shard %s, %s view: %s", name, view, line)
            with _writing(rel + index_file(view)):
                ix.save(directory / index_file(view))
            labels: Counter[str] = Counter()
            for new_index, position in enumerate(positions):
                row = dict(by_view[view][position], row_index=new_index)
                labels[str(row["label"])] += 1
                shard_rows.append(row)
            totals[view].update(labels)
            views[view] = {
                "count": ix.ntotal,
                "kind": ix.kind,
                "factory": ix.factory,
                "nprobe": ix.nprobe,
                "reason": reason,
                "describe": ix.describe(),
                "label_counts": dict(sorted(labels.items())),
            }
        _write_store(
            directory / STORE_FILE,
            f"{shard_dir(name)}/{STORE_FILE}",
            shard_rows,
            {
                "model_id": model_id,
                "shard": name,
                **(meta or {}),
            },
        )
        shard_specs[name] = {"views": views}
    view_specs = {
        view: {
            "dim": int(m.shape[1]),
            "metric": "inner_product",
            "count": int(m.shape[0]),
            "label_counts": dict(sorted(totals[view].items())),
        }
        for view, m in mats.items()
    }
    with _writing("manifest.json"):
        return write_manifest(
            version_dir,
            model_id=model_id,
            model_sha256=model_sha256,
            views=view_specs,
            shards=shard_specs,
            source=source,
            index_policy={"factory": factory, "large_factory": large_factory, "nprobe": nprobe},
        )


def _save_npy(path: Path, array: npt.NDArray[np.float32]) -> None:
    """``np.save`` through Python's file object: numpy's own C writer reports a full disk
    as "2970 requested and 992 written"; Python raises ENOSPC/EFBIG with the OS's words."""
    array = np.ascontiguousarray(array)
    with path.open("wb") as fh:
        np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(array))
        rows = max(1, (1 << 24) // max(1, array.itemsize * int(np.prod(array.shape[1:]))))
        for start in range(0, len(array), rows):
            fh.write(array[start : start + rows].tobytes())


def _choice(n: int, factory: str | None, large_factory: str) -> tuple[str, str]:
    if factory is None:
        choice = choose_index(n, large_factory)
        return choice.factory, choice.reason
    return factory, f"{factory}: chosen explicitly for {n:,} vectors"


def _matrix(view: str, vectors: npt.ArrayLike) -> npt.NDArray[np.float32]:
    m = np.asarray(vectors, dtype=np.float32)
    if m.ndim != 2:
        raise LibraryError(f"{view} vectors must be a 2-D (n, dim) array, got shape {m.shape}")
    return m


def _rows_by_view(
    rows: Iterable[Mapping[str, Any]], counts: Mapping[str, int]
) -> dict[str, list[Mapping[str, Any]]]:
    """Rows per view in row_index order; every vector has exactly one row, ids are unique."""
    by_view: dict[str, dict[int, Mapping[str, Any]]] = {view: {} for view in counts}
    seen: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        view = row.get("view")
        if view not in by_view:
            raise LibraryError(f"signature {row.get('id')}: view {view!r} has no vectors")
        first = seen.get(row["id"])
        if first is not None:
            raise LibraryError(
                f"duplicate signature id {row['id']}: record {row.get('record_id')} window at "
                f"{row.get('offset_s')} s ({view}) appears twice "
                f"(first as record {first.get('record_id')} at {first.get('offset_s')} s)"
            )
        seen[row["id"]] = row
        index = int(row["row_index"])
        if index in by_view[view]:
            raise LibraryError(f"two {view} rows claim row_index {index}")
        by_view[view][index] = row
    out: dict[str, list[Mapping[str, Any]]] = {}
    for view, n in counts.items():
        found = by_view[view]
        if len(found) != n or (found and (min(found) != 0 or max(found) != n - 1)):
            raise LibraryError(f"{STORE_FILE}: {len(found)} {view} rows for {n} vectors")
        out[view] = [found[i] for i in range(n)]
    return out


def _write_store(
    path: Path, rel: str, rows: Sequence[Mapping[str, Any]], meta: Mapping[str, str]
) -> None:
    with _writing(rel):
        store = SignatureStore(path, durable=False)  # fsynced with the whole build
        try:
            for start in range(0, len(rows), _STORE_BATCH):
                store.add_many(rows[start : start + _STORE_BATCH])
            for key, value in meta.items():
                store.set_meta(key, value)
        finally:
            store.close()
