"""Novelty thresholds and confidence calibration, measured on the library itself.

A global cosine threshold cannot tell "a new bearing of a known fault" from "a fault the
library has never seen": on CWRU the best *other* class already scores 0.92-0.96, while
some classes are spread wide (outer-race 0.014 in looks little like the other outer-race
bearings). So every class gets its own yardstick, measured the way the library will be
used: each library window is looked up **with its own damaged bearing (group) left out**,
and its best match among the *other* bearings of its class says how close a new bearing of
that class typically comes. A class's novelty threshold is a low quantile (default 5 %) of
those similarities: by construction a new bearing of a known class falls below it about
that often, while a window unlike every class falls below every class's threshold.

A class with a single group (CWRU has one healthy recording) cannot be left out whole;
its windows are compared with time-disjoint windows of the same recording instead, which
is optimistic (the threshold is then high, so healthy data from elsewhere reads novel
more easily), and the calibration says so in ``method``.

The same leave-one-group-out lookups fit the vote's temperature (softmax over cosine
scores) by log-likelihood of the true class: temperature scaling, the confidence then being
the winner's share of the vote. A richer map (vote share and typicality through a logistic
fit) was tried and dropped: inside a library of two bearings per class, leaving one out
leaves a single reference bearing, which is much harder than the deployment condition, so
the map came out under-confident (CWRU leave-one-fault-size-out ECE 0.35 against 0.15 for
the plain share). The whole ``Calibration`` is plain JSON, stored in the library version at
build time so the agent decides without recomputing anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "CALIBRATION_KEY",
    "Calibration",
    "ClassCalibration",
    "HeldOutLookups",
    "calibrate",
    "calibrate_library",
    "calibration_from_manifest",
    "crossfit_folds",
    "held_out_lookups",
    "vote_shares",
]

CALIBRATION_KEY = "calibration"
_QUANTILES = (0.01, 0.05, 0.10, 0.25, 0.50)
_SHARE_EPS = 1e-3  # floor under a true class's share in the likelihood
_TEMPERATURES = np.geomspace(0.002, 0.3, 41)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class ClassCalibration:
    """How close a library class's own windows come to it when their bearing is unseen."""

    label: str
    n_windows: int
    n_groups: int
    method: str  # "leave-one-group-out" or "time-disjoint windows (single group)"
    quantiles: dict[str, float]  # "p01".."p50" of the held-out best in-class similarity
    threshold: float  # a best in-class match below this is novel for this class
    scale: float  # median - threshold (>= 0.01): unit of the typicality score


@dataclass(frozen=True)
class Calibration:
    """Everything ``verdict.decide`` needs to turn neighbours into a calibrated verdict."""

    classes: dict[str, ClassCalibration]
    quantile: float
    k: int
    temperature: float
    n_queries: int
    fit: dict[str, float] = field(default_factory=dict)  # held-out accuracy, novel rate

    def threshold(self, label: str) -> float | None:
        entry = self.classes.get(label)
        return None if entry is None else entry.threshold

    def typicality(self, label: str, best_score: float) -> float | None:
        """(best - threshold) / scale: < 0 means novel for ``label``; None if uncalibrated."""
        entry = self.classes.get(label)
        if entry is None:
            return None
        return (best_score - entry.threshold) / entry.scale

    def tail(self, label: str, best_score: float) -> float | None:
        """Share of unseen-bearing matches of ``label`` that came no closer than
        ``best_score`` (interpolated between the stored quantiles, floored at the lowest)."""
        entry = self.classes.get(label)
        if entry is None:
            return None
        points = sorted((v, int(k[1:]) / 100) for k, v in entry.quantiles.items())
        values = np.array([v for v, _ in points])
        levels = np.array([q for _, q in points])
        return float(np.interp(best_score, values, levels, left=levels[0], right=levels[-1]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Calibration:
        try:
            classes = {
                str(label): ClassCalibration(
                    label=str(entry["label"]),
                    n_windows=int(entry["n_windows"]),
                    n_groups=int(entry["n_groups"]),
                    method=str(entry["method"]),
                    quantiles={str(k): float(v) for k, v in entry["quantiles"].items()},
                    threshold=float(entry["threshold"]),
                    scale=float(entry["scale"]),
                )
                for label, entry in data["classes"].items()
            }
            return cls(
                classes=classes,
                quantile=float(data["quantile"]),
                k=int(data["k"]),
                temperature=float(data["temperature"]),
                n_queries=int(data["n_queries"]),
                fit={str(k): float(v) for k, v in data.get("fit", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed calibration: {exc!r}") from None


def calibration_from_manifest(manifest: Mapping[str, Any], view: str) -> Calibration | None:
    """The calibration a library version stored for ``view`` (None for older libraries).

    Looked up at the manifest's top level first, then under ``source`` (where
    ``builder.build_library`` puts it without changing the manifest schema).
    """
    for holder in (manifest, manifest.get("source") or {}):
        block = holder.get(CALIBRATION_KEY) if isinstance(holder, Mapping) else None
        if isinstance(block, Mapping) and isinstance(block.get(view), Mapping):
            return Calibration.from_dict(block[view])
    return None


# --- held-out lookups ---------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOutLookups:
    """Each sampled library window searched against the library minus its own group."""

    query: npt.NDArray[np.intp]  # row of the library window used as a query
    labels: npt.NDArray[np.str_]  # (q, k) neighbour labels
    scores: F64  # (q, k) neighbour cosine scores, best first
    best_same: F64  # (q,) best score among other groups of the query's own class
    single_group: npt.NDArray[np.bool_]  # (q,) the class had one group: time-disjoint rule


def crossfit_folds(
    labels: Sequence[str],
    groups: Sequence[str],
    *,
    records: Sequence[str],
    offsets_s: Sequence[float],
    n_folds: int = 2,
) -> npt.NDArray[np.int64]:
    """Calibration fold of every library row, for models fitted on the library itself.

    A trained projection has seen every library window, so similarities measured in its
    space are optimistic for any group it was trained on. Cross-fitting trains one model
    per fold without that fold and measures the fold's windows in it. Groups of a class go
    round-robin to folds (sorted by name: on CWRU each fold is then one fault size); a class
    with one group is split into contiguous time blocks of each of its recordings. Two
    folds by default: each extra fold is one more training per evaluation fold, and two
    already keep every group out of the model that measures it.
    """
    lab = np.asarray(labels, dtype=np.str_)
    grp = np.asarray(groups, dtype=np.str_)
    rec = np.asarray(records, dtype=np.str_)
    off = np.asarray(offsets_s, dtype=np.float64)
    n_groups = max((len(set(grp[lab == c].tolist())) for c in set(lab.tolist())), default=1)
    n = max(2, min(n_folds, n_groups))
    out = np.zeros(lab.shape[0], dtype=np.int64)
    for c in sorted(set(lab.tolist())):
        names = sorted(set(grp[lab == c].tolist()))
        if len(names) > 1:
            for j, g in enumerate(names):
                out[(lab == c) & (grp == g)] = j % n
            continue
        for r in set(rec[lab == c].tolist()):
            rows = np.flatnonzero((lab == c) & (rec == r))
            order = rows[np.argsort(off[rows], kind="stable")]
            out[order] = np.arange(order.size) * n // max(order.size, 1)
    return out


def held_out_lookups(
    vectors: npt.ArrayLike | None,
    labels: Sequence[str],
    groups: Sequence[str],
    *,
    records: Sequence[str],
    offsets_s: Sequence[float],
    window_s: float,
    k: int = 10,
    max_queries_per_class: int = 2000,
    seed: int = 0,
    chunk: int = 256,
    folds: npt.ArrayLike | None = None,
    embed: Callable[[int], npt.ArrayLike] | None = None,
) -> HeldOutLookups:
    """kNN of library windows with their own group removed (see module docstring).

    Cross-fitted when ``folds`` and ``embed`` are given: ``embed(f)`` returns every library
    row embedded by a model trained without fold ``f``; fold ``f``'s windows are then
    looked up in that space among the rows outside the fold. Brute force in chunks (exact
    inner product, as the flat FAISS index); queries are subsampled per class so big
    libraries calibrate in seconds.
    """
    lab = np.asarray(labels, dtype=np.str_)
    grp = np.asarray(groups, dtype=np.str_)
    rec = np.asarray(records, dtype=np.str_)
    off = np.asarray(offsets_s, dtype=np.float64)
    n = lab.shape[0]
    if not (grp.shape == rec.shape == off.shape == (n,)):
        raise ValueError("labels, groups, records and offsets_s must have one row each")
    fold_of = np.zeros(n, dtype=np.int64) if folds is None else np.asarray(folds, np.int64)
    if (folds is None) != (embed is None) or fold_of.shape != (n,):
        raise ValueError("cross-fitting needs both folds (one per row) and embed")
    if embed is None and (vectors is None or np.shape(vectors)[0] != n):
        raise ValueError("vectors must have one row per label")
    rng = np.random.default_rng(seed)
    single = {c: len(set(grp[lab == c].tolist())) == 1 for c in set(lab.tolist())}
    picks = []
    for c in sorted(single):
        rows = np.flatnonzero(lab == c)
        if rows.size > max_queries_per_class:
            rows = np.sort(rng.choice(rows, max_queries_per_class, replace=False))
        picks.append(rows)
    query = np.concatenate(picks) if picks else np.zeros(0, dtype=np.intp)
    kk = min(k, n)
    out_labels = np.empty((query.size, kk), dtype=lab.dtype)
    out_scores = np.full((query.size, kk), -np.inf)
    best_same = np.full(query.size, -np.inf)
    for f in sorted(set(fold_of[query].tolist())):
        space = vectors if embed is None else embed(f)
        v = np.ascontiguousarray(space, dtype=np.float32)
        outside = np.ones(n, dtype=bool) if embed is None else fold_of != f
        at = np.flatnonzero(fold_of[query] == f)
        for start in range(0, at.size, chunk):
            pos = at[start : start + chunk]
            q = query[pos]
            sims = (v[q] @ v.T).astype(np.float64)
            qsingle = np.array([single[c] for c in lab[q].tolist()], dtype=bool)
            same_group = grp[q][:, None] == grp[None, :]
            overlap = (rec[q][:, None] == rec[None, :]) & (
                np.abs(off[q][:, None] - off[None, :]) < window_s - 1e-9
            )
            excluded = np.where(qsingle[:, None], overlap, same_group) | ~outside[None, :]
            sims[excluded] = -np.inf
            top = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
            out_scores[pos] = np.take_along_axis(sims, top, axis=1)
            out_labels[pos] = lab[top]
            same_class = lab[q][:, None] == lab[None, :]
            best_same[pos] = np.where(same_class, sims, -np.inf).max(axis=1)
    single_flags = np.array([single[c] for c in lab[query].tolist()], dtype=bool)
    return HeldOutLookups(query, out_labels, out_scores, best_same, single_flags)


# --- fitting --------------------------------------------------------------------------------


def vote_shares(
    labels: npt.NDArray[np.str_], scores: F64, classes: Sequence[str], temperature: float
) -> F64:
    """(q, len(classes)) softmax-weighted vote shares; neighbours at -inf carry no weight."""
    finite = np.isfinite(scores)
    safe = np.where(finite, scores, -1e9)
    top = safe.max(axis=1, keepdims=True)
    w = np.where(finite, np.exp((safe - top) / temperature), 0.0)
    w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
    return np.stack([(w * (labels == c)).sum(axis=1) for c in classes], axis=1)


def _fit_temperature(lookups: HeldOutLookups, truth: npt.NDArray[np.str_]) -> float:
    classes = sorted(set(truth.tolist()) | set(lookups.labels.ravel().tolist()))
    col = {c: i for i, c in enumerate(classes)}
    ti = np.array([col[t] for t in truth.tolist()])
    best_t, best_nll = 0.05, math.inf
    for t in _TEMPERATURES:
        p = vote_shares(lookups.labels, lookups.scores, classes, float(t))[np.arange(ti.size), ti]
        nll = float(-np.mean(np.log(p * (1 - 2 * _SHARE_EPS) + _SHARE_EPS)))
        if nll < best_nll - 1e-12:
            best_t, best_nll = float(t), nll
    return best_t


def calibrate(
    vectors: npt.ArrayLike | None,
    labels: Sequence[str],
    groups: Sequence[str],
    *,
    records: Sequence[str],
    offsets_s: Sequence[float],
    window_s: float,
    k: int = 10,
    quantile: float = 0.05,
    max_queries_per_class: int = 2000,
    seed: int = 0,
    folds: npt.ArrayLike | None = None,
    embed: Callable[[int], npt.ArrayLike] | None = None,
) -> Calibration:
    """Measure per-class novelty thresholds, vote temperature and confidence map.

    ``groups``: the unit left out (a damaged bearing: CWRU's four loads of one fault size
    are one bearing); ``records``/``offsets_s``/``window_s`` define time-disjointness for
    classes with a single group. ``folds``/``embed``: cross-fitting for a model trained
    on this library (see :func:`crossfit_folds`); without them ``vectors`` is used as is.
    """
    if not 0.0 < quantile < 0.5:
        raise ValueError(f"quantile must be in (0, 0.5), got {quantile}")
    look = held_out_lookups(
        vectors,
        labels,
        groups,
        records=records,
        offsets_s=offsets_s,
        window_s=window_s,
        k=k,
        max_queries_per_class=max_queries_per_class,
        seed=seed,
        folds=folds,
        embed=embed,
    )
    lab = np.asarray(labels, dtype=np.str_)
    grp = np.asarray(groups, dtype=np.str_)
    truth = lab[look.query]
    classes: dict[str, ClassCalibration] = {}
    for c in sorted(set(lab.tolist())):
        mask = (truth == c) & np.isfinite(look.best_same)
        values = look.best_same[mask]
        if values.size == 0:
            continue  # one window, nothing to compare with: left uncalibrated
        qs = {f"p{round(q * 100):02d}": float(np.quantile(values, q)) for q in _QUANTILES}
        threshold = float(np.quantile(values, quantile))
        single = bool(look.single_group[truth == c].any())
        classes[c] = ClassCalibration(
            label=c,
            n_windows=int(values.size),
            n_groups=len(set(grp[lab == c].tolist())),
            method="time-disjoint windows (single group)" if single else "leave-one-group-out",
            quantiles=qs,
            threshold=threshold,
            scale=max(float(np.median(values)) - threshold, 0.01),
        )
    temperature = _fit_temperature(look, truth)
    names = sorted(set(lab.tolist()))
    shares = vote_shares(look.labels, look.scores, names, temperature)
    win = np.argmax(shares, axis=1)
    winner = np.asarray(names, dtype=np.str_)[win]
    best_win = np.where(look.labels == winner[:, None], look.scores, -np.inf).max(axis=1)
    novel = np.array(
        [_typ(classes, w, s) < 0 for w, s in zip(winner.tolist(), best_win.tolist(), strict=True)],
        dtype=bool,
    )
    correct = winner == truth
    fit = {
        "held_out_accuracy": float(correct.mean()) if correct.size else math.nan,
        "held_out_novel_rate": float(novel.mean()) if novel.size else math.nan,
        "held_out_mean_share": float(shares[np.arange(win.size), win].mean())
        if win.size
        else math.nan,
    }
    return Calibration(
        classes=classes,
        quantile=quantile,
        k=k,
        temperature=temperature,
        n_queries=int(look.query.size),
        fit=fit,
    )


def _typ(classes: Mapping[str, ClassCalibration], label: str, best: float) -> float:
    entry = classes.get(label)
    if entry is None or not math.isfinite(best):
        return 0.0
    return (best - entry.threshold) / entry.scale


def group_of(row: Mapping[str, Any]) -> str:
    """The physical bearing a library row was recorded on (the unit calibration leaves out).

    CWRU's four loads of one fault type and size are one damaged bearing; every healthy
    recording of one dataset and bearing type counts as one healthy bearing.
    """
    return "|".join(str(row.get(key)) for key in ("dataset", "label", "fault_size_in", "bearing"))


def calibrate_library(
    vectors: Mapping[str, npt.ArrayLike],
    rows: Sequence[Mapping[str, Any]],
    *,
    k: int = 10,
    quantile: float = 0.05,
) -> dict[str, Any]:
    """Per-view calibration of a library being built, as JSON for its manifest.

    ``rows`` are the signature rows (``view``, ``row_index``, ``label``, ``record_id``,
    ``offset_s``, ``window_s``, ...) whose ``row_index`` numbers ``vectors[view]``.
    """
    out: dict[str, Any] = {}
    for view, matrix in vectors.items():
        mine = sorted((r for r in rows if r["view"] == view), key=lambda r: int(r["row_index"]))
        if len(mine) < 2:
            continue
        out[view] = calibrate(
            matrix,
            [str(r["label"]) for r in mine],
            [group_of(r) for r in mine],
            records=[f"{r.get('source_sha256')}|{r['record_id']}" for r in mine],
            offsets_s=[float(r["offset_s"]) for r in mine],
            window_s=float(mine[0]["window_s"]),
            k=k,
            quantile=quantile,
        ).to_dict()
    return out
