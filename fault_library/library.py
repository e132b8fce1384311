"""A verified, versioned, sharded fault library, opened for serving.

``FaultLibrary.open`` checks the manifest, the sha256 and size of every file of the shards
it loads, the encoder's model id, and that each FAISS index, raw-vector file and store
agree on their counts, before anything is served. A flipped bit, a truncated copy or a
library built by another encoder (whose vectors mean nothing to ours) is refused with the
file named; ``reload_if_changed`` relies on that to keep the old version serving.

A gateway may load every shard or a configured subset; search asks each loaded shard and
merges their top-k exactly (``shards.merge_topk``). Layout and checksums: ``manifest``;
writing a version: ``writer``; the root's versions and ``current`` link: ``versions``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faultline.fault_library.baseline import MIN_WINDOWS, Baseline, fit_baseline
from faultline.fault_library.index import VectorIndex
from faultline.fault_library.manifest import (
    FORMAT_VERSION,
    MANIFEST,
    STORE_FILE,
    LibraryError,
    VerifyReport,
    index_file,
    load_manifest,
    vectors_file,
    verify_shard_files,
)
from faultline.fault_library.novelty import Calibration, calibration_from_manifest
from faultline.fault_library.physics import (
    DEFAULT_RULES,
    LINE_RULES_KEY,
    FamilyRule,
    rules_from_dict,
)
from faultline.fault_library.shards import merge_ranked, merge_topk, owner
from faultline.fault_library.signing import (
    SignatureError,
    SigningKey,
    Trust,
    sign_version,
    verify_version,
)
from faultline.fault_library.store import VIEWS, SignatureStore, StoreError
from faultline.fault_library.versions import (
    CURRENT,
    current_target,
    current_version,
    list_versions,
    new_build_dir,
    remove_stale_builds,
    switch_current,
)
from faultline.fault_library.writer import write_version

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "STORE_FILE",
    "FaultLibrary",
    "LibraryError",
    "Neighbour",
    "ShardTopK",
    "current_version",
    "index_file",
    "list_versions",
    "new_build_dir",
    "open_current",
    "publish_version",
    "reload_if_changed",
    "remove_stale_builds",
    "write_version",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Neighbour:
    id: str
    label: str
    score: float


@dataclass(frozen=True, slots=True)
class ShardTopK:
    """One shard's answer: ``(n_queries, k)`` scores, ids and labels; id ``""``: no hit."""

    scores: npt.NDArray[np.float32]
    ids: npt.NDArray[np.str_]
    labels: npt.NDArray[np.str_]


@dataclass(frozen=True, slots=True)
class _Shard:
    name: str
    path: Path
    indexes: dict[str, VectorIndex]
    store: SignatureStore
    labels: dict[str, npt.NDArray[np.str_]]
    ids: dict[str, npt.NDArray[np.str_]]


class FaultLibrary:
    """An opened, verified version: per shard a FAISS index per view + a signature store."""

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        manifest_sha256: str,
        shards: dict[str, _Shard],
        verified: VerifyReport,
        signed_by: str | None = None,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.verified = verified
        self.signed_by = signed_by  # key id of a verified signature; None: not checked/unsigned
        self._shards = shards
        # Build time first so names sort by age; the manifest hash tells same-second builds
        # apart and changes if anything in the version does.
        stamp = str(manifest["created_at"]).replace("-", "").replace(":", "")
        self.version = f"{stamp}-{manifest_sha256[:8]}"
        # Enrolled assets' baselines are few rows; fitting them at open keeps the first
        # window of an enrolled asset as fast as the rest.
        self._baselines = {view: self._fit_baselines(view) for view in self.views}
        self._calibrations = {
            view: calibration_from_manifest(manifest, view) for view in self.views
        }
        source = manifest.get("source") or {}
        self._line_rules = {
            view: rules_from_dict((source.get(LINE_RULES_KEY) or {}).get(view, {}))
            for view in self.views
        }
        # The writer records every view's label counts over the whole library (all shards).
        self._labels = {
            view: frozenset(manifest["views"][view].get("label_counts", {})) for view in self.views
        }

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        expected_model_id: str | None = None,
        shards: Sequence[str] | None = None,
        trust: Trust | None = None,
    ) -> FaultLibrary:
        """Verify and load ``shards`` (default: all); raise ``LibraryError`` naming the file.

        With ``trust``, the version's signature is checked first (``signing``): the
        signature pins the manifest, which pins every shard file checked below."""
        version_dir = Path(path)
        if not version_dir.is_dir():
            raise LibraryError(f"{version_dir}: not a library version directory")
        signed_by = None
        if trust is not None:
            try:
                signed_by = verify_version(version_dir, trust)
            except SignatureError as exc:
                raise LibraryError(f"signature refused: {exc}") from None
        manifest, manifest_sha = load_manifest(version_dir)
        model_id = manifest["encoder"].get("model_id")
        if expected_model_id is not None and model_id != expected_model_id:
            raise LibraryError(
                f"{MANIFEST}: built with encoder {model_id!r}, but this agent runs "
                f"{expected_model_id!r}; rebuild the library with the current encoder"
            )
        available = list(manifest["sharding"]["shards"])
        wanted = available if shards is None else list(dict.fromkeys(shards))
        unknown = [s for s in wanted if s not in available]
        if unknown or not wanted:
            raise LibraryError(
                f"{MANIFEST}: no shard {', '.join(unknown) or '(none asked)'} in this version; "
                f"it has {', '.join(available)}"
            )
        verified = verify_shard_files(version_dir, manifest, wanted)
        loaded: dict[str, _Shard] = {}
        try:
            for name in wanted:
                loaded[name] = _open_shard(version_dir, manifest, name)
        except LibraryError:
            for shard in loaded.values():
                shard.store.close()
            raise
        return cls(version_dir, manifest, manifest_sha, loaded, verified, signed_by)

    # -- properties ---------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return str(self.manifest["encoder"]["model_id"])

    @property
    def views(self) -> tuple[str, ...]:
        """Views in the store's canonical order (the manifest's JSON keys are sorted)."""
        known = self.manifest["views"]
        return tuple([v for v in VIEWS if v in known] + sorted(v for v in known if v not in VIEWS))

    @property
    def shards(self) -> tuple[str, ...]:
        """Shards loaded here (a gateway may hold a subset)."""
        return tuple(self._shards)

    @property
    def all_shards(self) -> tuple[str, ...]:
        """Every shard of this version, loaded or not."""
        return tuple(self.manifest["sharding"]["shards"])

    def indexes(self, view: str) -> dict[str, VectorIndex]:
        self._check_view(view)
        return {name: shard.indexes[view] for name, shard in self._shards.items()}

    def _check_view(self, view: str) -> None:
        if view not in self.manifest["views"]:
            raise ValueError(f"no {view!r} index; this library has {self.views}")

    # -- queries ------------------------------------------------------------------------
    def search(self, view: str, vectors: npt.ArrayLike, k: int) -> list[list[Neighbour]]:
        """Top-``k`` neighbours per query vector over the loaded shards, merged exactly.
        In-memory arrays only: no SQL here."""
        self._check_view(view)
        answers = [self.search_shard(name, view, vectors, k) for name in self._shards]
        merged = merge_topk([a.scores for a in answers], [a.ids for a in answers], k)
        return [
            [Neighbour(h.id, str(answers[h.shard].labels[q, h.column]), h.score) for h in hits]
            for q, hits in enumerate(merged)
        ]

    def search_shard(self, shard: str, view: str, vectors: npt.ArrayLike, k: int) -> ShardTopK:
        """One loaded shard's own top-``k`` (the part a fleet gathers from each holder and
        merges with ``merge_topk``, exactly as ``search`` merges the shards held here)."""
        self._check_view(view)
        held = self._shards.get(shard)
        if held is None:
            raise LibraryError(
                f"shard {shard} is not loaded here (loaded: {', '.join(self._shards)})"
            )
        scores, rows = held.indexes[view].search(vectors, k)
        clipped = np.clip(rows, 0, None)
        hit = rows >= 0
        return ShardTopK(
            scores=scores,
            ids=np.where(hit, held.ids[view][clipped], ""),
            labels=np.where(hit, held.labels[view][clipped], ""),
        )

    def baseline(self, view: str, asset: str) -> Baseline | None:
        """The asset's enrolled healthy baseline in ``view`` (None: not enrolled here)."""
        return self._baselines.get(view, {}).get(asset)

    def labels(self, view: str) -> frozenset[str]:
        """Every class the library holds in ``view``, in all shards (held here or not)."""
        return self._labels.get(view, frozenset())

    def line_rules(self, view: str) -> tuple[FamilyRule, ...]:
        """The line thresholds fitted on this library's own signatures at build time
        (the priors of ``physics.DEFAULT_RULES`` for a version built without them)."""
        return self._line_rules.get(view, DEFAULT_RULES)

    def calibration(self, view: str) -> Calibration | None:
        """Per-class novelty thresholds and vote temperature measured at build time."""
        return self._calibrations.get(view)

    def baselines(self, view: str = "window") -> dict[str, Baseline]:
        """Every enrolled asset's baseline loaded here (shards not held are not seen)."""
        return dict(self._baselines.get(view, {}))

    def _fit_baselines(self, view: str) -> dict[str, Baseline]:
        groups: dict[str, list[npt.NDArray[np.float32]]] = {}
        for shard in self._shards.values():
            rows = shard.store.baseline_rows(view)
            if not rows:
                continue
            vectors = np.load(shard.path / vectors_file(view), mmap_mode="r", allow_pickle=False)
            for asset, row in rows:
                groups.setdefault(asset, []).append(np.asarray(vectors[row], dtype=np.float32))
        return {
            asset: fit_baseline(asset, np.stack(parts))
            for asset, parts in groups.items()
            if len(parts) >= MIN_WINDOWS
        }

    def describe(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """Full signature rows (+ ``shard``) for reports, in the order asked; ids of shards
        not loaded here are left out."""
        groups: dict[str, list[str]] = {}
        for signature_id in dict.fromkeys(ids):
            groups.setdefault(owner(signature_id, self.all_shards), []).append(signature_id)
        found: dict[str, dict[str, Any]] = {}
        for name, group in groups.items():
            shard = self._shards.get(name)
            if shard is not None:
                for row in shard.store.get(group):
                    found[row["id"]] = {**row, "shard": name}
        return [found[i] for i in ids if i in found]

    def search_text(
        self, query: str, limit: int = 10, *, any_word: bool = False
    ) -> list[dict[str, Any]]:
        """FTS5 over descriptions in every loaded shard, merged by bm25 rank (lower first)."""
        parts = [
            self.search_text_shard(name, query, limit, any_word=any_word) for name in self._shards
        ]
        return merge_ranked(parts, limit)

    def search_text_shard(
        self, shard: str, query: str, limit: int = 10, *, any_word: bool = False
    ) -> list[dict[str, Any]]:
        """One loaded shard's full-text hits (+ ``shard``), best first."""
        held = self._shards.get(shard)
        if held is None:
            raise LibraryError(
                f"shard {shard} is not loaded here (loaded: {', '.join(self._shards)})"
            )
        return [
            {**hit, "shard": shard}
            for hit in held.store.search_text(query, limit, any_word=any_word)
        ]

    # -- raw contents (for deriving a new version) ----------------------------------------
    def export(self, view: str) -> tuple[npt.NDArray[np.float32], list[dict[str, Any]]]:
        """Every vector of ``view`` and its row, shard by shard (needs all shards loaded)."""
        self._check_view(view)
        missing = [s for s in self.all_shards if s not in self._shards]
        if missing:
            raise LibraryError(f"cannot export {view}: shard(s) {', '.join(missing)} not loaded")
        parts: list[npt.NDArray[np.float32]] = []
        rows: list[dict[str, Any]] = []
        for shard in self._shards.values():
            parts.append(np.load(shard.path / vectors_file(view), allow_pickle=False))
            rows += shard.store.rows(view)
        dim = int(self.manifest["views"][view]["dim"])
        vectors = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
        return vectors.astype(np.float32, copy=False), rows

    def info(self) -> dict[str, Any]:
        shard_specs = self.manifest["shards"]
        views: dict[str, Any] = {}
        for view in self.views:
            spec = self.manifest["views"][view]
            labels: dict[str, int] = {}
            for name in self._shards:
                for label, n in shard_specs[name]["views"][view].get("label_counts", {}).items():
                    labels[label] = labels.get(label, 0) + int(n)
            parts = self.indexes(view)
            views[view] = {
                "index": _view_line(parts, {n: shard_specs[n]["views"][view] for n in parts}),
                "kind": "/".join(sorted({ix.kind for ix in parts.values()})),
                "factory": "/".join(sorted({ix.factory for ix in parts.values()})),
                "dim": spec["dim"],
                "count": sum(ix.ntotal for ix in parts.values()),
                "count_all_shards": spec["count"],
                "label_counts": dict(sorted(labels.items())),
            }
        return {
            "version": self.version,
            "path": str(self.path),
            "created_at": self.manifest["created_at"],
            "model_id": self.model_id,
            "format_version": self.manifest["format_version"],
            "views": views,
            "sharding": {
                "scheme": self.manifest["sharding"]["scheme"],
                "shards": list(self.all_shards),
                "loaded": list(self.shards),
            },
            "shards": {
                name: {
                    "loaded": name in self._shards,
                    "path": str(self.path / entry["dir"]),
                    "views": entry["views"],
                }
                for name, entry in shard_specs.items()
            },
            "source": self.manifest.get("source", {}),
            "files": {
                MANIFEST: str(self.path / MANIFEST),
                **{
                    f"{shard_specs[name]['dir']}/{f}": str(self.path / shard_specs[name]["dir"] / f)
                    for name in self._shards
                    for f in shard_specs[name]["files"]
                },
            },
        }

    def close(self) -> None:
        for shard in self._shards.values():
            shard.store.close()

    def __enter__(self) -> FaultLibrary:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _view_line(parts: dict[str, VectorIndex], specs: dict[str, dict[str, Any]]) -> str:
    """One line saying which search runs for a view, and why (from the build's choice)."""
    if len(parts) == 1:
        ((name, ix),) = parts.items()
        reason = specs[name].get("reason")
        return str(reason) if ix.kind == "exact" and reason else ix.describe()
    total = sum(ix.ntotal for ix in parts.values())
    if all(ix.kind == "exact" for ix in parts.values()):
        largest = max(parts, key=lambda n: parts[n].ntotal)
        why = specs[largest].get("reason") or parts[largest].describe()
        why = str(why).removeprefix("exact (FlatIP): ")
        return f"exact (FlatIP): {total:,} vectors in {len(parts)} shards (largest shard: {why})"
    return "; ".join(f"{name}: {ix.describe()}" for name, ix in parts.items())


def _open_shard(version_dir: Path, manifest: dict[str, Any], name: str) -> _Shard:
    entry = manifest["shards"][name]
    directory = version_dir / entry["dir"]
    rel = f"{entry['dir']}/"
    indexes: dict[str, VectorIndex] = {}
    for view, spec in entry["views"].items():
        dim, count = manifest["views"][view]["dim"], spec["count"]
        try:
            ix = VectorIndex.load(directory / index_file(view), factory=spec.get("factory"))
        except (RuntimeError, ValueError) as exc:
            raise LibraryError(
                f"{rel}{index_file(view)}: cannot be read by FAISS ({exc})"
            ) from None
        if ix.dim != dim or ix.ntotal != count:
            raise LibraryError(
                f"{rel}{index_file(view)}: holds {ix.ntotal} x {ix.dim}, manifest says "
                f"{count} x {dim}"
            )
        try:
            raw = np.load(directory / vectors_file(view), mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise LibraryError(f"{rel}{vectors_file(view)}: not a .npy array ({exc})") from None
        if raw.dtype != np.float32 or raw.shape != (count, dim):
            raise LibraryError(
                f"{rel}{vectors_file(view)}: holds {raw.shape} {raw.dtype}, manifest says "
                f"({count}, {dim}) float32"
            )
        del raw
        indexes[view] = ix
    try:
        store = SignatureStore(directory / STORE_FILE, readonly=True)
    except (StoreError, sqlite3.Error) as exc:
        raise LibraryError(f"{rel}{STORE_FILE}: cannot be opened ({exc})") from None
    try:
        for view, ix in indexes.items():
            stored = store.count(view)
            if stored != ix.ntotal:
                raise LibraryError(
                    f"{rel}{STORE_FILE}: {stored} {view} signatures, but {index_file(view)} "
                    f"holds {ix.ntotal}"
                )
        labels = {view: store.labels(view) for view in indexes}
        ids = {view: store.ids(view) for view in indexes}
    except (StoreError, sqlite3.Error) as exc:
        store.close()
        raise LibraryError(f"{rel}{STORE_FILE}: unusable ({exc})") from None
    except LibraryError:
        store.close()
        raise
    return _Shard(name, directory, indexes, store, labels, ids)


# -- library root: publish, open, reload ----------------------------------------------------
def publish_version(
    root: str | Path,
    built_dir: str | Path,
    *,
    expected_model_id: str | None = None,
    signer: SigningKey | None = None,
) -> Path:
    """Verify ``built_dir`` (every shard), sign it with ``signer`` if given, move it to
    ``versions/<version>`` and point ``current`` at it. Returns the published directory."""
    if signer is not None:
        try:
            sign_version(built_dir, signer)
        except (SignatureError, OSError) as exc:
            raise LibraryError(f"cannot sign {Path(built_dir).name}: {exc}") from None
    trust = Trust({signer.key_id: signer.private.public_key()}) if signer else None
    with FaultLibrary.open(built_dir, expected_model_id=expected_model_id, trust=trust) as lib:
        version = lib.version
    try:
        return switch_current(root, built_dir, version)
    except FileExistsError as exc:
        raise LibraryError(str(exc)) from None


def open_current(
    root: str | Path,
    *,
    expected_model_id: str | None = None,
    shards: Sequence[str] | None = None,
    trust: Trust | None = None,
) -> FaultLibrary:
    target = current_target(root)
    if target is None:
        link = Path(root) / CURRENT
        raise LibraryError(f"{link}: no published library version (run `faultline library build`)")
    return FaultLibrary.open(
        target, expected_model_id=expected_model_id, shards=shards, trust=trust
    )


def open_if_changed(
    current: FaultLibrary,
    root: str | Path,
    *,
    expected_model_id: str | None = None,
    trust: Trust | None = None,
) -> FaultLibrary | None:
    """A newly opened library if ``<root>/current`` now points at another version, else
    None; raises ``LibraryError`` (naming the file) when that version fails verification.
    The same shards as ``current`` are loaded, and by default the same encoder is required.
    """
    target = current_target(root)
    if target is None or target == current.path.resolve():
        return None
    subset = None if set(current.shards) == set(current.all_shards) else current.shards
    try:
        return FaultLibrary.open(
            target,
            expected_model_id=current.model_id if expected_model_id is None else expected_model_id,
            shards=subset,
            trust=trust,
        )
    except OSError as exc:
        raise LibraryError(f"{target.name}: {exc}") from exc


def reload_if_changed(
    current: FaultLibrary, root: str | Path, *, expected_model_id: str | None = None
) -> FaultLibrary | None:
    """Like ``open_if_changed``, but a refused version is logged and None returned, so the
    caller keeps serving ``current``; the caller closes ``current`` once no search uses it.
    """
    try:
        return open_if_changed(current, root, expected_model_id=expected_model_id)
    except OSError as exc:
        log.warning("cannot read %s/%s: %s", root, CURRENT, exc)
        return None
    except LibraryError as exc:
        target = current_target(root)
        name = target.name if target is not None else "?"
        log.error("library version %s refused, still serving %s: %s", name, current.version, exc)
        return None
