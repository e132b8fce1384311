"""Leakage-safe evaluation: splits by recording, per-fold kNN verdicts, metrics.

Windows cut from one recording are one mounting of one bearing at one speed; a split that
puts windows of a recording on both sides measures memory, not diagnosis. Every split here
assigns whole recordings to one side. The single exception is the healthy class when it has
one recording per condition (CWRU: record 97): its windows are split into time-disjoint
halves (library: first half, test: second half), and every fold says so in its notes.
:func:`leaks` checks a fold against exactly that rule.

Pure: window metadata and vectors in, folds and numbers out. Loading recordings, computing
features and training projections belong to the caller (``faultline eval``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from faultline.encoders.quality import Quality
from faultline.fault_library.diagnosis import DecisionPolicy, decide_window
from faultline.fault_library.novelty import Calibration, calibrate, crossfit_folds, vote_shares
from faultline.fault_library.physics import LineEvidence
from faultline.fault_library.verdict import (
    DEFAULT_TEMPERATURE,
    UNKNOWN,
    Verdict,
    aggregate,
)

__all__ = [
    "CLASSES",
    "FIRST_HALF",
    "SECOND_HALF",
    "Fold",
    "FoldResult",
    "WindowInfo",
    "balanced_accuracy",
    "confusion_matrix",
    "cross_rate_folds",
    "held_out_class_folds",
    "leaks",
    "lofso_folds",
    "lolo_folds",
    "per_class_recall",
    "reliability",
    "run_fold",
]

CLASSES = ("normal", "inner_race", "outer_race", "ball")
WHOLE, FIRST_HALF, SECOND_HALF = "whole", "first half", "second half"
HEALTHY_NOTE = (
    "normal: the healthy recording(s) split into time-disjoint halves "
    "(library: first half, test: second half)"
)
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class WindowInfo:
    """Where one evaluation window came from (enough to assign it to a side)."""

    record_id: str
    label: str
    fault_size_in: float
    load_hp: int | None
    fs: float
    offset_s: float
    window_s: float
    segment: str  # WHOLE, or FIRST_HALF / SECOND_HALF for healthy recordings
    group: str  # the physical bearing (CWRU: one per fault type and size)


@dataclass(frozen=True)
class Fold:
    split: str
    name: str
    library: I64
    test: I64
    notes: tuple[str, ...] = ()


def _idx(info: Sequence[WindowInfo], keep: Callable[[WindowInfo], bool]) -> I64:
    return np.array([i for i, w in enumerate(info) if keep(w)], dtype=np.int64)


def _rows(flags: Iterable[bool]) -> I64:
    return np.flatnonzero(np.fromiter(flags, dtype=bool)).astype(np.int64)


def _base_fault(w: WindowInfo, base_fs: float) -> bool:
    return w.label != "normal" and math.isclose(w.fs, base_fs)


def _healthy(w: WindowInfo, segment: str) -> bool:
    return w.label == "normal" and w.segment == segment


def _fault_fold(
    split: str,
    name: str,
    info: Sequence[WindowInfo],
    base_fs: float,
    held: Callable[[WindowInfo], bool],
    notes: Sequence[str],
) -> Fold:
    """Base-rate fault recordings ``held`` are tested, the rest form the library; the
    healthy recording contributes its first half to the library and its second to the test."""
    return Fold(
        split,
        name,
        _idx(info, lambda w: (_base_fault(w, base_fs) and not held(w)) or _healthy(w, FIRST_HALF)),
        _idx(info, lambda w: (_base_fault(w, base_fs) and held(w)) or _healthy(w, SECOND_HALF)),
        tuple(notes),
    )


def _size_is(size: float) -> Callable[[WindowInfo], bool]:
    return lambda w: w.fault_size_in == size


def _load_is(load: int) -> Callable[[WindowInfo], bool]:
    return lambda w: w.load_hp == load


def lofso_folds(info: Sequence[WindowInfo], *, base_fs: float = 12000.0) -> list[Fold]:
    """Leave one fault size out: each size is another damaged bearing the library never saw."""
    sizes = sorted({w.fault_size_in for w in info if _base_fault(w, base_fs)})
    notes = (HEALTHY_NOTE, f"faults: {base_fs / 1000:g} kHz recordings only")
    return [
        _fault_fold("lofso", f"{size:g} in", info, base_fs, _size_is(size), notes) for size in sizes
    ]


def lolo_folds(info: Sequence[WindowInfo], *, base_fs: float = 12000.0) -> list[Fold]:
    """Leave one load out (the same bearings at other speeds: mostly a memory test)."""
    loads = sorted({w.load_hp for w in info if _base_fault(w, base_fs) and w.load_hp is not None})
    healthy_loads = sorted({w.load_hp for w in info if w.label == "normal"}, key=str)
    folds = []
    for load in loads:
        notes = [HEALTHY_NOTE, f"healthy data exists only at {healthy_loads} hp"]
        if load not in healthy_loads:
            notes.append(f"normal at {load} hp is untested: the halves come from another load")
        folds.append(_fault_fold("lolo", f"{load} hp", info, base_fs, _load_is(load), notes))
    return folds


def cross_rate_folds(info: Sequence[WindowInfo], *, base_fs: float = 12000.0) -> list[Fold]:
    """Library at ``base_fs``; the fault recordings at other rates are the tests.

    Two folds: with every base-rate recording (on CWRU the 48 kHz 0.007 in records are the
    same bearings as 105/118/130: rate invariance), and without the test recordings'
    bearings (rate *and* bearing unseen).
    """
    other = [w for w in info if w.label != "normal" and not math.isclose(w.fs, base_fs)]
    if not other:
        return []
    rates = sorted({w.fs for w in other})
    unseen = {w.group for w in other}
    note_rate = f"tests: fault recordings at {', '.join(f'{r / 1000:g}' for r in rates)} kHz"
    healthy_rates = sorted({w.fs for w in info if w.label == "normal"})
    note_h = f"{HEALTHY_NOTE}; healthy recorded at {healthy_rates} Hz"

    def test(w: WindowInfo) -> bool:
        return (w.label != "normal" and not math.isclose(w.fs, base_fs)) or _healthy(w, SECOND_HALF)

    return [
        Fold(
            "cross-rate",
            "same bearings",
            _idx(info, lambda w: _base_fault(w, base_fs) or _healthy(w, FIRST_HALF)),
            _idx(info, test),
            (note_rate, "library holds the test bearings at the base rate", note_h),
        ),
        Fold(
            "cross-rate",
            "unseen bearings",
            _idx(
                info,
                lambda w: (
                    (_base_fault(w, base_fs) and w.group not in unseen) or _healthy(w, FIRST_HALF)
                ),
            ),
            _idx(info, test),
            (note_rate, "library without the test recordings' bearings", note_h),
        ),
    ]


def held_out_class_folds(
    info: Sequence[WindowInfo], *, base_fs: float = 12000.0, classes: Sequence[str] = CLASSES
) -> list[Fold]:
    """One class removed from the library entirely; its windows should come out unknown.

    The test side is that class's windows only (every other recording is in the library).
    Removing ``normal`` leaves a library of faults only, so all its windows are tested.
    """
    folds = []
    for held in classes:
        if not any(w.label == held for w in info):
            continue
        if held == "normal":
            lib = _idx(info, lambda w: _base_fault(w, base_fs))
            tst = _idx(info, lambda w: w.label == "normal")
            notes: tuple[str, ...] = ("library: every fault recording, no healthy data",)
        else:
            lib = _rows(
                (_base_fault(w, base_fs) and w.label != held) or _healthy(w, FIRST_HALF)
                for w in info
            )
            tst = _rows(_base_fault(w, base_fs) and w.label == held for w in info)
            notes = (f"library: every other {base_fs / 1000:g} kHz recording", HEALTHY_NOTE)
        folds.append(Fold("held-out-class", held, lib, tst, notes))
    return folds


def leaks(fold: Fold, info: Sequence[WindowInfo]) -> list[str]:
    """Recordings with windows on both sides, unless they are time-disjoint healthy halves."""
    problems = []
    sides = {}
    for side, rows in (("library", fold.library), ("test", fold.test)):
        spans: dict[str, list[tuple[float, float, str]]] = {}
        for i in rows.tolist():
            w = info[i]
            spans.setdefault(w.record_id, []).append(
                (w.offset_s, w.offset_s + w.window_s, w.segment)
            )
        sides[side] = spans
    for record in sorted(set(sides["library"]) & set(sides["test"])):
        lib, tst = sides["library"][record], sides["test"][record]
        segs = {s for *_, s in lib} | {s for *_, s in tst}
        if WHOLE in segs or {s for *_, s in lib} & {s for *_, s in tst}:
            problems.append(f"{fold.split}/{fold.name}: record {record} on both sides")
            continue
        lib_end = max(b for _, b, _ in lib) if lib else 0.0
        tst_start = min(a for a, _, _ in tst) if tst else math.inf
        lib_start = min(a for a, _, _ in lib) if lib else math.inf
        tst_end = max(b for _, b, _ in tst) if tst else 0.0
        if not (lib_end <= tst_start + 1e-9 or tst_end <= lib_start + 1e-9):
            problems.append(f"{fold.split}/{fold.name}: record {record} halves overlap in time")
    overlap = set(fold.library.tolist()) & set(fold.test.tolist())
    if overlap:
        problems.append(f"{fold.split}/{fold.name}: {len(overlap)} windows on both sides")
    return problems


# --- metrics ------------------------------------------------------------------------------


def confusion_matrix(
    truth: Sequence[str], pred: Sequence[str], classes: Sequence[str] = CLASSES
) -> npt.NDArray[np.int64]:
    """Rows: true class; columns: ``classes`` then ``unknown`` (anything else is dropped)."""
    cols = {c: j for j, c in enumerate([*classes, UNKNOWN])}
    rows = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(classes), len(cols)), dtype=np.int64)
    for t, p in zip(truth, pred, strict=True):
        if t in rows and p in cols:
            out[rows[t], cols[p]] += 1
    return out


def per_class_recall(
    truth: Sequence[str], pred: Sequence[str], classes: Sequence[str] = CLASSES
) -> dict[str, float]:
    """Share of each present class's windows given their own label (unknown is a miss)."""
    out = {}
    for c in classes:
        hits = [p == c for t, p in zip(truth, pred, strict=True) if t == c]
        if hits:
            out[c] = sum(hits) / len(hits)
    return out


def balanced_accuracy(
    truth: Sequence[str], pred: Sequence[str], classes: Sequence[str] = CLASSES
) -> float:
    """Mean recall over the classes present in ``truth`` (NaN when none is)."""
    recalls = per_class_recall(truth, pred, classes)
    return float(np.mean(list(recalls.values()))) if recalls else math.nan


def reliability(
    confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 10
) -> dict[str, Any]:
    """Equal-width confidence bins vs accuracy and the expected calibration error (ECE)."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, n_bins - 1)
    bins = []
    ece = 0.0
    for b in range(n_bins):
        m = which == b
        if not m.any():
            continue
        acc, mean_conf = float(ok[m].mean()), float(conf[m].mean())
        ece += m.sum() / max(conf.size, 1) * abs(acc - mean_conf)
        bins.append(
            {
                "lo": float(edges[b]),
                "hi": float(edges[b + 1]),
                "n": int(m.sum()),
                "confidence": mean_conf,
                "accuracy": acc,
            }
        )
    return {"bins": bins, "ece": float(ece) if conf.size else math.nan, "n": int(conf.size)}


# --- one fold -----------------------------------------------------------------------------


@dataclass
class FoldResult:
    fold: Fold
    truth: list[str]
    verdicts: list[Verdict]
    records: list[str]
    calibration: Calibration | None
    record_verdicts: dict[str, Verdict] = field(default_factory=dict)
    raw_shares: list[float] = field(default_factory=list)  # winner's share at T = 0.05
    baseline_pred: list[str] = field(default_factory=list)  # the envelope baseline's labels

    @property
    def pred(self) -> list[str]:
        return [v.label for v in self.verdicts]

    def summary(self, classes: Sequence[str] = CLASSES) -> dict[str, Any]:
        """Everything printed and written to JSON for this fold."""
        pred = self.pred
        classified = [i for i, p in enumerate(pred) if p != UNKNOWN]
        correct = [pred[i] == self.truth[i] for i in classified]
        raw = [self.raw_shares[i] for i in classified] if self.raw_shares else []
        misses: dict[str, dict[str, Any]] = {}
        for t, p, r in zip(self.truth, pred, self.records, strict=True):
            entry = misses.setdefault(r, {"truth": t, "windows": 0, "wrong": {}})
            entry["windows"] += 1
            if p != t:
                entry["wrong"][p] = entry["wrong"].get(p, 0) + 1
        return {
            "split": self.fold.split,
            "fold": self.fold.name,
            "notes": list(self.fold.notes),
            "library_windows": int(self.fold.library.size),
            "test_windows": int(self.fold.test.size),
            "balanced_accuracy": balanced_accuracy(self.truth, pred, classes),
            "recall": per_class_recall(self.truth, pred, classes),
            "unknown_rate": float(np.mean([p == UNKNOWN for p in pred])) if pred else math.nan,
            "confusion": {
                "rows": list(classes),
                "cols": [*classes, UNKNOWN],
                "counts": confusion_matrix(self.truth, pred, classes).tolist(),
            },
            "labels_given": _count(pred),
            "reliability": reliability([self.verdicts[i].confidence for i in classified], correct),
            "reliability_raw_share": reliability(raw, correct) if raw else None,
            "records": {
                r: {
                    "verdict": v.label,
                    "confidence": round(v.confidence, 4),
                    "reason": v.reason,
                    **misses[r],
                }
                for r, v in self.record_verdicts.items()
            },
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "baseline": None
            if not self.baseline_pred
            else {
                "balanced_accuracy": balanced_accuracy(self.truth, self.baseline_pred, classes),
                "recall": per_class_recall(self.truth, self.baseline_pred, classes),
            },
            "codes": _count([v.code or "match" for v in self.verdicts]),
        }


def _count(labels: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for label in labels:
        out[label] = out.get(label, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def knn(
    library: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """Exact top-``k`` inner products (what a flat FAISS index returns), best first."""
    sims = (queries @ library.T).astype(np.float64)
    kk = min(k, library.shape[0])
    part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
    order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
    rows = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(sims, rows, axis=1), rows.astype(np.int64)


def window_verdicts(
    lib_labels: npt.NDArray[np.str_],
    scores: npt.NDArray[np.float64],
    rows: npt.NDArray[np.int64],
    *,
    policy: DecisionPolicy,
    calibration: Calibration | None,
    evidence: Sequence[LineEvidence] | None = None,
    quality: Sequence[Quality | None] | None = None,
) -> list[Verdict]:
    """The runtime's verdict (:func:`faultline.fault_library.diagnosis.decide_window`)
    for each query's ``knn`` result, against the classes in ``lib_labels``."""
    known = set(lib_labels.tolist())
    return [
        decide_window(
            lib_labels[r].tolist(),
            s.tolist(),
            policy=policy,
            calibration=calibration,
            known=known,
            evidence=None if evidence is None else evidence[i],
            quality=None if quality is None else quality[i],
        )
        for i, (s, r) in enumerate(zip(scores, rows, strict=True))
    ]


def run_fold(
    fold: Fold,
    info: Sequence[WindowInfo],
    vectors: npt.NDArray[np.float32],
    *,
    k: int = 10,
    min_similarity: float = 0.5,
    min_confidence: float = 0.5,
    calibrated: bool = True,
    quantile: float = 0.05,
    refit: Callable[[I64], npt.NDArray[np.float32]] | None = None,
    evidence: Sequence[LineEvidence] | None = None,
    quality: Sequence[Quality | None] | None = None,
    absence: bool = True,
) -> FoldResult:
    """Calibrate on the library side only, then decide every test window and recording.

    ``refit(rows)``: for vectors from a model trained on the library side, the library
    embedded by the same kind of model trained on ``rows`` only; calibration is then
    cross-fitted (:func:`faultline.fault_library.novelty.crossfit_folds`).
    ``evidence``: line evidence of the test windows (in ``fold.test`` order); each verdict
    is then cross-checked with it (:func:`faultline.fault_library.physics.reconcile`),
    and ``absence`` lets a window with no sign of damage be ``normal``.
    ``quality``: the signal-quality verdicts of the test windows (same order).
    """
    lib = fold.library
    lib_info = [info[i] for i in lib.tolist()]
    labels = np.array([w.label for w in lib_info])
    calibration = None
    if calibrated:
        records = [w.record_id for w in lib_info]
        offsets = [w.offset_s for w in lib_info]
        groups = [w.group for w in lib_info]
        folds: npt.NDArray[np.int64] | None = None
        embed: Callable[[int], npt.NDArray[np.float32]] | None = None
        if refit is not None:
            fitted = refit
            fold_ids = crossfit_folds(labels.tolist(), groups, records=records, offsets_s=offsets)
            folds = fold_ids
            embed = lambda f: fitted(lib[fold_ids != f])  # noqa: E731
        calibration = calibrate(
            None if refit is not None else vectors[lib],
            labels.tolist(),
            groups,
            records=records,
            offsets_s=offsets,
            window_s=lib_info[0].window_s,
            k=k,
            quantile=quantile,
            folds=folds,
            embed=embed,
        )
    scores, rows = knn(vectors[lib], vectors[fold.test], k)
    policy = DecisionPolicy(
        top_k=k,
        min_similarity=min_similarity,
        min_confidence=min_confidence,
        calibrated=calibrated,
        line_check=evidence is not None,
        absence=absence,
    )
    verdicts = window_verdicts(
        labels,
        scores,
        rows,
        policy=policy,
        calibration=calibration,
        evidence=evidence,
        quality=quality,
    )
    names = sorted(set(labels.tolist()))
    raw = vote_shares(labels[rows], scores, names, DEFAULT_TEMPERATURE).max(axis=1)
    test_info = [info[i] for i in fold.test.tolist()]
    records = [
        f"{w.record_id}" + ("" if w.segment == WHOLE else f" ({w.segment})") for w in test_info
    ]
    by_record: dict[str, list[Verdict]] = {}
    for r, v in zip(records, verdicts, strict=True):
        by_record.setdefault(r, []).append(v)
    return FoldResult(
        fold=fold,
        truth=[w.label for w in test_info],
        verdicts=verdicts,
        records=records,
        calibration=calibration,
        record_verdicts={
            r: aggregate(vs, min_confidence=min_confidence) for r, vs in by_record.items()
        },
        raw_shares=raw.tolist(),
    )
