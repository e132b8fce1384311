"""Everything a report needs to cite a signature, in one SQLite file.

The FAISS index only knows row numbers; this store maps each (view, row) back to a stable
signature id, its fault class, the recording and window it came from, the data set's file
hash and the encoder that produced it, plus a human description searchable with FTS5.

Ids are stable across rebuilds so reports stay citable: ``signature_id`` is the first 16
hex characters (64 bits) of ``sha256("<source_sha256>|<record_id>|<offset_s:.6f>|
<window_s:.6f>|<view>")``. The same window of the same file gets the same id whichever
encoder embeds it; collisions need ~4e9 signatures to become likely.

Hot-path lookups (labels and ids by row) are loaded once into numpy arrays; SQL is only
used for reports and text search. One connection is shared by threads behind a lock.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import sqlite_utils

from faultline.fault_library.knowledge_store import fts_query
from faultline.fault_library.labels import parse_fault_label

__all__ = [
    "COLUMNS",
    "VIEWS",
    "SignatureStore",
    "StoreError",
    "describe_signature",
    "signature_id",
]

VIEWS: Final[tuple[str, ...]] = ("window", "spectrum")

# Column -> SQLite type. Nullable where the data set may not know the value.
COLUMNS: Final[dict[str, type]] = {
    "id": str,
    "view": str,
    "row_index": int,
    "label": str,
    "fault_size_in": float,
    "load_hp": int,
    "rpm": float,
    "bearing": str,
    "source": str,
    "record_id": str,
    "offset_s": float,
    "window_s": float,
    "dataset": str,
    "source_sha256": str,
    "asset": str,
    "model_id": str,
    "model_version": str,
    "description": str,
}
_REQUIRED: Final[frozenset[str]] = frozenset(
    {
        "id",
        "view",
        "row_index",
        "label",
        "source",
        "record_id",
        "offset_s",
        "window_s",
        "model_id",
        "description",
    }
)
_NULLABLE: Final[frozenset[str]] = frozenset(COLUMNS) - _REQUIRED

_LABEL_TEXT: Final[dict[str, str]] = {
    "normal": "Healthy bearing (normal)",
    "inner_race": "Inner-race fault",
    "outer_race": "Outer-race fault",
    "ball": "Ball fault",
    "cage": "Cage fault",
}


class StoreError(RuntimeError):
    """The store's content is inconsistent or a write would break an invariant."""


def signature_id(
    source_sha256: str, record_id: str, offset_s: float, window_s: float, view: str
) -> str:
    """Stable id of one window of one recording in one view (see module docstring)."""
    key = f"{source_sha256}|{record_id}|{offset_s:.6f}|{window_s:.6f}|{view}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def describe_signature(
    *,
    label: str,
    record_id: str,
    offset_s: float,
    fault_size_in: float | None = None,
    defect: str = "defect",
    bearing: str | None = None,
    position: str | None = None,
    load_hp: int | None = None,
    rpm: float | None = None,
    dataset: str | None = None,
) -> str:
    """Human text for reports and FTS, e.g. "Inner-race fault, 0.007 in EDM pit, drive-end
    SKF 6205, 1 hp load, 1772 rpm (CWRU record 106, window at 3.0 s)"."""
    parts = [_LABEL_TEXT.get(label, label)]
    if fault_size_in and label != "normal":
        parts.append(f"{fault_size_in:g} in {defect}")
    if bearing:
        where = f"{position} " if position else ""
        parts.append(f"{where}{bearing if 'SKF' in bearing.upper() else 'SKF ' + bearing}")
    if load_hp is not None:
        parts.append(f"{load_hp} hp load")
    if rpm is not None:
        parts.append(f"{rpm:.0f} rpm")
    origin = f"{dataset} record {record_id}" if dataset else f"record {record_id}"
    return ", ".join(parts) + f" ({origin}, window at {offset_s:.1f} s)"


class SignatureStore:
    """The signatures table (+ FTS5 over descriptions) and a small key/value ``meta`` table."""

    def __init__(self, path: str | Path, *, readonly: bool = False, durable: bool = True) -> None:
        """``durable=False`` skips SQLite's per-commit fsync and keeps the rollback journal
        in memory: for files written into a build directory that is fsynced as a whole
        before it is published and thrown away if anything fails (~10x faster builds)."""
        self.path = Path(path)
        self.readonly = readonly
        if readonly:
            if not self.path.is_file():
                raise StoreError(f"{self.path.name}: no such file")
            uri = self.path.resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            conn = sqlite3.connect(self.path, check_same_thread=False)
            if not durable:
                conn.execute("PRAGMA synchronous = OFF")
                conn.execute("PRAGMA journal_mode = MEMORY")
        self._conn = conn
        self._db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        self._rows_cache: dict[str, tuple[npt.NDArray[np.str_], npt.NDArray[np.str_]]] = {}
        if not readonly:
            self._ensure_schema()

    # -- schema -------------------------------------------------------------------------
    def _ensure_schema(self) -> None:
        with self._lock:
            sigs = self._db.table("signatures")
            if not sigs.exists():
                sigs.create(dict(COLUMNS), pk="id", not_null=set(_REQUIRED))
                sigs.create_index(["view", "row_index"], unique=True)
                sigs.create_index(["label"])
                sigs.enable_fts(["description"], create_triggers=True, tokenize="porter")
            meta = self._db.table("meta")
            if not meta.exists():
                meta.create({"key": str, "value": str}, pk="key")

    # -- writes -------------------------------------------------------------------------
    def add_many(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert signatures atomically; a bad row or a duplicate id rejects the whole batch."""
        if self.readonly:
            raise StoreError(f"{self.path.name}: opened read-only")
        clean = [self._validated(i, row) for i, row in enumerate(rows)]
        if not clean:
            return 0
        seen: set[str] = set()
        for row in clean:
            if row["id"] in seen:
                raise StoreError(f"duplicate signature id {row['id']} within one batch")
            seen.add(row["id"])
        with self._lock:
            try:
                with self._conn:  # one transaction: all rows or none
                    self._db.table("signatures").insert_all(clean, batch_size=500, alter=False)
            except sqlite3.IntegrityError as exc:
                raise StoreError(self._explain_conflict(clean, exc)) from exc
            self._rows_cache.clear()
        return len(clean)

    def _validated(self, i: int, row: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise StoreError(f"row {i}: unknown column(s) {', '.join(sorted(unknown))}")
        missing = {k for k in _REQUIRED if row.get(k) is None}
        if missing:
            raise StoreError(f"row {i}: missing required column(s) {', '.join(sorted(missing))}")
        if row["view"] not in VIEWS:
            raise StoreError(f"row {i}: view must be one of {VIEWS}, got {row['view']!r}")
        try:
            label = parse_fault_label(str(row["label"]))
        except ValueError as exc:
            raise StoreError(f"row {i} ({row['id']}): {exc}") from None
        out = {k: row.get(k) for k in COLUMNS}
        out["label"] = label
        out["record_id"] = str(out["record_id"])
        return out

    def _explain_conflict(self, rows: Sequence[Mapping[str, Any]], exc: Exception) -> str:
        ids = [r["id"] for r in rows]
        found = self._conn.execute(
            "SELECT id FROM signatures WHERE id IN (SELECT value FROM json_each(?))",
            (_json_list(ids),),
        ).fetchall()
        taken = {t[0] for t in found}
        if taken:
            first = [i for i in ids if i in taken]
            more = ", ..." if len(first) > 3 else ""
            return (
                f"{len(first)} signature id(s) already in the store: {', '.join(first[:3])}{more}"
            )
        return f"rows clash on (view, row_index): {exc}"

    def set_meta(self, key: str, value: str) -> None:
        with self._lock, self._conn:
            self._db.table("meta").upsert({"key": key, "value": value}, pk="key")

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            if not self._db.table("meta").exists():
                return None
            found = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if found is None else str(found[0])

    # -- reads --------------------------------------------------------------------------
    def count(self, view: str | None = None) -> int:
        with self._lock:
            if view is None:
                found = self._conn.execute("SELECT count(*) FROM signatures").fetchone()
            else:
                found = self._conn.execute(
                    "SELECT count(*) FROM signatures WHERE view = ?", (view,)
                ).fetchone()
        return int(found[0])

    def label_counts(self, view: str) -> dict[str, int]:
        with self._lock:
            found = self._conn.execute(
                "SELECT label, count(*) FROM signatures WHERE view = ? GROUP BY label "
                "ORDER BY label",
                (view,),
            ).fetchall()
        return {str(label): int(n) for label, n in found}

    def get(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """Rows for ``ids`` in the order asked; ids not in the store are left out."""
        rows = self._select("id IN (SELECT value FROM json_each(?))", (_json_list(ids),))
        by_id = {r["id"]: r for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def by_row(self, view: str, row_indices: Sequence[int]) -> list[dict[str, Any]]:
        """Rows at these index positions of ``view`` (one query), in the order asked."""
        wanted = [int(r) for r in row_indices]
        rows = self._select(
            "view = ? AND row_index IN (SELECT value FROM json_each(?))",
            (view, _json_list(wanted)),
        )
        by_row = {r["row_index"]: r for r in rows}
        return [by_row[r] for r in wanted if r in by_row]

    def rows(self, view: str) -> list[dict[str, Any]]:
        """Every row of ``view`` in index order: what a derived version starts from."""
        return self._select("view = ? ORDER BY row_index", (view,))

    def _select(self, where: str, args: tuple[object, ...]) -> list[dict[str, Any]]:
        with self._lock:
            cur = self._conn.execute(f"SELECT * FROM signatures WHERE {where}", args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, values, strict=True)) for values in cur.fetchall()]

    def baseline_rows(self, view: str) -> list[tuple[str, int]]:
        """(asset, row_index) of every enrolled healthy-baseline row of ``view``."""
        with self._lock:
            found = self._conn.execute(
                "SELECT asset, row_index FROM signatures WHERE view = ? AND asset IS NOT NULL "
                "AND label = 'normal' ORDER BY asset, row_index",
                (view,),
            ).fetchall()
        return [(str(asset), int(row)) for asset, row in found]

    def labels(self, view: str) -> npt.NDArray[np.str_]:
        """Label of every row of ``view``'s index, position = FAISS row (cached)."""
        return self._row_arrays(view)[0]

    def ids(self, view: str) -> npt.NDArray[np.str_]:
        """Signature id of every row of ``view``'s index (cached)."""
        return self._row_arrays(view)[1]

    def _row_arrays(self, view: str) -> tuple[npt.NDArray[np.str_], npt.NDArray[np.str_]]:
        with self._lock:
            cached = self._rows_cache.get(view)
            if cached is not None:
                return cached
            found = self._conn.execute(
                "SELECT row_index, label, id FROM signatures WHERE view = ? ORDER BY row_index",
                (view,),
            ).fetchall()
            rows = np.fromiter((r[0] for r in found), dtype=np.int64, count=len(found))
            if not np.array_equal(rows, np.arange(len(found))):
                raise StoreError(
                    f"{self.path.name}: row_index of view {view!r} is not 0..{len(found) - 1}"
                )
            labels = np.array([r[1] for r in found], dtype=np.str_)
            ids = np.array([r[2] for r in found], dtype=np.str_)
            labels.setflags(write=False)
            ids.setflags(write=False)
            self._rows_cache[view] = (labels, ids)
            return labels, ids

    def search_text(
        self, query: str, limit: int = 10, *, view: str | None = None, any_word: bool = False
    ) -> list[dict[str, Any]]:
        """Full-text search over descriptions, best first (FTS5 bm25 in ``rank``, lower is
        better). Query words are quoted, so user text cannot inject FTS5 syntax.
        ``any_word``: match descriptions with any of the query's content words (a question),
        not all of them (a search box)."""
        if not query.strip():
            return []
        quote = True
        if any_word:
            ored = fts_query(query)
            if ored is None:
                return []
            query, quote = ored, False  # fts_query quotes every word itself
        where, args = (None, None) if view is None else ("view = :view", {"view": view})
        with self._lock:
            hits = self._db.table("signatures").search(
                query, limit=limit, quote=quote, include_rank=True, where=where, where_args=args
            )
            out = [dict(h) for h in hits]
        for hit in out:
            hit.pop("rowid", None)
        return out

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self._rows_cache.clear()

    def __enter__(self) -> SignatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json_list(values: Sequence[object]) -> str:
    return json.dumps(list(values))
