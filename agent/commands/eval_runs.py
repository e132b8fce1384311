"""Running ``faultline eval``'s splits: the labelled folder in memory, embeddings per fold.

Every recording is read and cut into windows once; features are computed once per view and
kept in memory, so folds only cost the vote (and, with the trained projection, training it
on that fold's library side, which is never shown a test recording). Splits and metrics are
pure and live in :mod:`faultline.fault_library.evaluation`; printing and the command line
in :mod:`faultline.agent.commands.eval`.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.signal import resample_poly

from faultline.encoders import features as ft
from faultline.encoders.dsp import magnitude_spectrum
from faultline.encoders.features import characteristic_orders
from faultline.encoders.geometry import bearing_preset
from faultline.encoders.quality import Quality
from faultline.encoders.signals import Measurement, Window, shape_groups
from faultline.encoders.spectrum import SpectrumEncoder, View
from faultline.fault_library import evaluation as ev
from faultline.fault_library.catalog import read_manifest
from faultline.fault_library.diagnosis import DecisionPolicy, quality_of, unresolved_of
from faultline.fault_library.envelope_baseline import EnvelopeBaseline, baseline_features
from faultline.fault_library.physics import (
    LineEvidence,
    LineEvidenceReader,
    fit_rules,
    shifted,
)
from faultline.fault_library.recordings import (
    Recording,
    RecordingError,
    iter_windows,
    read_recording,
)
from faultline.fault_library.verdict import UNKNOWN, aggregate

F32 = npt.NDArray[np.float32]
SPLITS = ("lofso", "lolo", "cross-rate", "held-out-class")
ENVELOPE_PREFIXES = (ft.ENVELOPE,)
ORDER_ENVELOPE_PREFIXES = (ft.ENVELOPE, ft.COMB)
RATE_COPIES = (48000.0, 96000.0)
POLICY = DecisionPolicy()  # the running agent's defaults: same thresholds as in production


# --- data -----------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Windows of every recording plus their features, computed once per view."""

    info: list[ev.WindowInfo]
    windows: list[Window]
    recordings: dict[str, Recording]
    encoder: SpectrumEncoder
    base_fs: float
    hop_s: float
    _features: dict[str, F32] = field(default_factory=dict)
    _copies: dict[tuple[str, float, str], F32] = field(default_factory=dict)
    _quality: list[Quality | None] | None = None
    _baseline: npt.NDArray[np.float64] | None = None
    _unresolved: dict[tuple[str, ...], npt.NDArray[np.bool_]] = field(default_factory=dict)

    def unresolved(self, names: Sequence[str]) -> npt.NDArray[np.bool_]:
        """Per window and feature column: its defect line lies within
        ``physics.RESOLVE_BINS`` bins of a shaft harmonic (computed once per layout)."""
        key = tuple(names)
        if key not in self._unresolved:
            self._unresolved[key] = unresolved_of(self.windows, self.encoder, names)
        return self._unresolved[key]

    def quality(self) -> list[Quality | None]:
        """The signal-quality gate's verdict of every window (computed once)."""
        if self._quality is None:
            self._quality = []
            for start in range(0, len(self.windows), 256):
                self._quality += quality_of(self.windows[start : start + 256])
        return self._quality

    def baseline_features(self) -> tuple[tuple[str, ...], npt.NDArray[np.float64]]:
        """The classical envelope baseline's line readings of every window (once)."""
        names, _ = characteristic_orders(self.windows[0].geometry or bearing_preset("6205"))
        if self._baseline is None:
            out = np.zeros((len(self.windows), len(names)))
            for (fs, _), rows in shape_groups(self.windows).items():
                for start in range(0, len(rows), 128):
                    part = rows[start : start + 128]
                    ws = [self.windows[i] for i in part]
                    rpm = [self.encoder.describe_rpm(w)[0] for w in ws]
                    geometry = [w.geometry or bearing_preset("6205") for w in ws]
                    _, out[part] = baseline_features(
                        np.stack([w.samples for w in ws]), fs, rpm, geometry
                    )
            self._baseline = out
        return names, self._baseline

    def features(self, view: View, tick: Callable[[int], object] | None = None) -> F32:
        """Every window's features in ``view`` (computed once; ``tick`` counts windows)."""
        if view not in self._features:
            self._features[view] = encode_features(self.encoder, self.windows, view, tick)
        return self._features[view]

    def copy_features(self, record: str, fs: float, view: View) -> F32:
        """Features of ``record`` resampled to ``fs`` (scipy polyphase), cut like the original."""
        key = (record, fs, view)
        if key not in self._copies:
            rec = self.recordings[record]
            if fs != rec.fs:
                ratio = Fraction(fs / rec.fs).limit_denominator(1000)
                signal = resample_poly(rec.signal, ratio.numerator, ratio.denominator)
                rec = replace(rec, signal=signal.astype(np.float32), fs=fs)
            window_s = self.info[0].window_s
            windows = list(iter_windows(rec, record, window_s=window_s, hop_s=self.hop_s))
            self._copies[key] = encode_features(self.encoder, windows, view)
        return self._copies[key]


def encode_features(
    encoder: SpectrumEncoder,
    windows: Sequence[Window],
    view: View,
    tick: Callable[[int], object] | None = None,
) -> F32:
    items: list[Measurement] = (
        list(windows) if view == "window" else [magnitude_spectrum(w) for w in windows]
    )
    parts = []
    for start in range(0, len(items), 256):
        parts.append(encoder.features(items[start : start + 256]))
        if tick is not None:
            tick(len(parts[-1]))
    return np.concatenate(parts)


def load_dataset(
    data_dir: Path,
    *,
    window_s: float,
    hop_s: float,
    estimate_rpm: bool = False,
    channel: str = "DE",
    bearing: str | None = None,
    tick: Callable[[int], object] | None = None,
) -> Dataset:
    """Every recording of ``data_dir`` cut into windows: the one dataset loader of
    ``faultline eval`` (and of the tests that evaluate).

    ``estimate_rpm``: forget the manifest's speed, so the encoder estimates it from each
    window's spectrum. ``channel``: the sensor (CWRU: ``DE``, ``FE``, ``BA``; a .mat
    variable name such as UESTC's ``Data`` for other layouts; recordings without it are
    skipped); windows of a channel other than DE are tagged ``<record>@<channel>`` so a
    split can tell the sensor positions apart. ``bearing``: the preset of manifests
    without a bearing column. A nominal speed (``rpm_nominal``) is refined from each
    window's spectrum within the manifest's tolerance. ``tick(1)`` after each recording
    (progress; :func:`manifest_size` is the total).
    """
    entries = read_manifest(data_dir, bearing=bearing)
    info: list[ev.WindowInfo] = []
    windows: list[Window] = []
    recordings: dict[str, Recording] = {}
    suffix = "" if channel.upper() == "DE" else f"@{channel}"
    for e in entries:
        try:
            rec = read_recording(
                e.path,
                fs=e.fs,
                rpm=e.rpm,
                geometry=bearing_preset(e.bearing),
                channel=e.key or channel,
            )
        except RecordingError:
            if channel.upper() in ("FE", "BA"):  # CWRU: BA exists only in the 12 kHz files
                continue
            raise
        if estimate_rpm:
            rec = replace(rec, rpm=None)
        record_id = f"{e.record_id}{suffix}"
        recordings[record_id] = rec
        group = str(
            e.meta.get("group")
            or e.meta.get("recording")
            or (
                f"normal:{e.bearing}"
                if e.label == "normal"
                else f"{e.label}:{e.fault_size_in:g}:{e.bearing}"
            )
        )
        half = rec.duration_s / 2
        spans = (
            [(ev.WHOLE, 0.0, None)]
            if e.label != "normal"
            else [(ev.FIRST_HALF, 0.0, half), (ev.SECOND_HALF, half, None)]
        )
        tolerance = 0.0 if estimate_rpm else e.rpm_tolerance
        for segment, start, stop in spans:
            for w in iter_windows(
                rec, record_id, window_s=window_s, hop_s=hop_s, start_s=start, stop_s=stop
            ):
                windows.append(replace(w, rpm_tolerance=tolerance) if tolerance else w)
                info.append(
                    ev.WindowInfo(
                        record_id=record_id,
                        label=e.label,
                        fault_size_in=e.fault_size_in,
                        load_hp=e.load_hp,
                        fs=rec.fs,
                        offset_s=w.ts,
                        window_s=window_s,
                        segment=segment,
                        group=group,
                    )
                )
        if tick is not None:
            tick(1)
    rates = [w.fs for w in info if w.label != "normal"]
    base_fs = max(set(rates), key=rates.count) if rates else 12000.0
    return Dataset(info, windows, recordings, SpectrumEncoder(projection=None), base_fs, hop_s)


def manifest_size(data_dir: Path) -> int:
    """How many recordings :func:`load_dataset` will read (at most)."""
    return len(read_manifest(data_dir))


def merged(library: Dataset, test: Dataset) -> tuple[Dataset, npt.NDArray[np.int64]]:
    """One dataset holding ``library``'s windows then ``test``'s (a transfer split's two
    sides), and the row numbers where ``test``'s begin."""
    data = Dataset(
        library.info + test.info,
        library.windows + test.windows,
        {**library.recordings, **test.recordings},
        library.encoder,
        library.base_fs,
        library.hop_s,
    )
    for view in library._features.keys() & test._features.keys():
        data._features[view] = np.concatenate([library._features[view], test._features[view]])
    if library._quality is not None and test._quality is not None:
        data._quality = library._quality + test._quality
    if library._baseline is not None and test._baseline is not None:
        data._baseline = np.concatenate([library._baseline, test._baseline])
    offset = len(library.info)
    return data, np.arange(offset, offset + len(test.info), dtype=np.int64)


# --- embeddings per fold ---------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    view: View
    projection: str  # "trained" | "none"
    drop: tuple[str, ...]  # feature-name prefixes zeroed (ablations)
    lines: bool = True  # cross-check verdicts with the characteristic lines (physics.py)
    lines_shift_db: float = 0.0  # every line threshold moved by this (sensitivity check)

    @property
    def name(self) -> str:
        env = {
            (): "all features",
            ENVELOPE_PREFIXES: "no envelope",
            ORDER_ENVELOPE_PREFIXES: "no envelope, no comb",
        }.get(self.drop, str(self.drop))
        lines = "" if self.lines else ", no line check"
        if self.lines and self.lines_shift_db:
            lines = f", line thresholds {self.lines_shift_db:+g} dB"
        return f"{self.view} view, {env}, projection {self.projection}{lines}"


class Embedder:
    """Vectors for a fold: v1 weighting, or a projection trained on the library side only."""

    def __init__(self, data: Dataset, config: Config) -> None:
        self.data, self.config = data, config
        names = data.encoder.feature_names(config.view)
        self.mask = np.array(
            [not n.startswith(config.drop) if config.drop else True for n in names],
            dtype=np.float32,
        )
        self.weights = data.encoder.weights(config.view) * self.mask
        # Dropped features are invisible to the line check too, as they are to retrieval.
        self.line_names = [n if keep else "" for n, keep in zip(names, self.mask > 0, strict=True)]
        self._readers: dict[bytes, LineEvidenceReader] = {}
        self._cache: dict[bytes, Callable[[F32], F32]] = {}
        self.results: dict[bytes, ev.FoldResult] = {}
        self.train_seconds = 0.0

    def embedding(self, library: npt.NDArray[np.int64]) -> Callable[[F32], F32]:
        key = library.tobytes()
        if key not in self._cache:
            self._cache[key] = self._fit(library)
        return self._cache[key]

    def _fit(self, library: npt.NDArray[np.int64]) -> Callable[[F32], F32]:
        mask, weights = self.mask, self.weights
        if self.config.projection == "none":

            def v1(feats: F32) -> F32:
                x = feats * weights
                out: F32 = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
                return out.astype(np.float32)

            return v1
        from faultline.encoders.training import train_projection

        started = time.perf_counter()
        feats = self.data.features(self.config.view)[library] * mask
        info = self.data.info
        proj = train_projection(
            feats,
            [info[i].label for i in library.tolist()],
            # Grouped by recording, as models/train_spectrum.py trains the shipped model.
            [info[i].record_id for i in library.tolist()],
            init_weights=np.where(mask > 0, weights, 1.0),
        )
        self.train_seconds += time.perf_counter() - started
        return lambda x: proj.apply(x * mask).astype(np.float32)

    def vectors(self, library: npt.NDArray[np.int64]) -> F32:
        return self.embedding(library)(self.data.features(self.config.view))

    def variant(self, config: Config) -> Embedder:
        """Same features and projections, another line-check setting (no retraining)."""
        if (config.view, config.projection, config.drop) != (
            self.config.view,
            self.config.projection,
            self.config.drop,
        ):
            raise ValueError(f"{config.name} needs its own projections")
        other = Embedder(self.data, config)
        other._cache = self._cache
        return other

    def lines(self, library: npt.NDArray[np.int64]) -> LineEvidenceReader:
        """The line reader whose thresholds are fitted on ``library``'s windows only
        (nested: a test window never shapes a threshold it is judged by)."""
        key = library.tobytes()
        if key not in self._readers:
            offset = self.data.encoder.params.prominence_offset_db
            rules = fit_rules(
                self.line_names,
                self.data.features(self.config.view)[library],
                [self.data.info[i].label for i in library.tolist()],
                offset_db=offset,
            )
            self._readers[key] = LineEvidenceReader(
                self.line_names, offset_db=offset, rules=shifted(rules, self.config.lines_shift_db)
            )
        return self._readers[key]

    def evidence(
        self, library: npt.NDArray[np.int64], rows: npt.NDArray[np.int64]
    ) -> list[LineEvidence] | None:
        """Line evidence of ``rows`` with thresholds fitted on ``library`` (None when the
        configuration skips the line check)."""
        if not self.config.lines:
            return None
        return self.lines(library).read(
            self.data.features(self.config.view)[rows],
            unresolved=self.data.unresolved(self.line_names)[rows],
        )

    def refit_for(
        self, library: npt.NDArray[np.int64]
    ) -> Callable[[npt.NDArray[np.int64]], F32] | None:
        """For cross-fitted calibration: ``library`` embedded by a model trained on a subset."""
        if self.config.projection == "none":
            return None
        feats = self.data.features(self.config.view)[library]

        def refit(rows: npt.NDArray[np.int64]) -> F32:
            return self.embedding(rows)(feats)

        return refit


# --- running splits ---------------------------------------------------------------------------


def folds_of(split: str, data: Dataset) -> list[ev.Fold]:
    fn = {
        "lofso": ev.lofso_folds,
        "lolo": ev.lolo_folds,
        "cross-rate": ev.cross_rate_folds,
        "held-out-class": ev.held_out_class_folds,
    }[split]
    folds = fn(data.info, base_fs=data.base_fs)
    for fold in folds:
        problems = ev.leaks(fold, data.info)
        if problems:
            raise AssertionError("; ".join(problems))
    return folds


def evaluate_fold(
    fold: ev.Fold, data: Dataset, embedder: Embedder, args: argparse.Namespace
) -> ev.FoldResult:
    """One fold, remembered (the rate-invariance check reuses LOFSO's calibrations)."""
    key = fold.library.tobytes() + fold.test.tobytes()
    if key not in embedder.results:
        quality = data.quality() if embedder.config.view == "window" else None
        result = ev.run_fold(
            fold,
            data.info,
            embedder.vectors(fold.library),
            k=args.k,
            min_similarity=POLICY.min_similarity,
            min_confidence=POLICY.min_confidence,
            calibrated=not args.no_calibration,
            quantile=args.quantile,
            refit=embedder.refit_for(fold.library),
            evidence=embedder.evidence(fold.library, fold.test),
            quality=None if quality is None else [quality[i] for i in fold.test.tolist()],
            absence=embedder.config.lines,
        )
        if embedder.config.view == "window":
            result.baseline_pred = baseline_labels(data, fold)
        embedder.results[key] = result
    return embedder.results[key]


def baseline_labels(data: Dataset, fold: ev.Fold) -> list[str]:
    """The classical envelope baseline fitted on the fold's library side, on its test side."""
    names, feats = data.baseline_features()
    labels = [data.info[i].label for i in fold.library.tolist()]
    return EnvelopeBaseline(names, feats[fold.library], labels).predict(feats[fold.test])


def run_split(
    split: str,
    data: Dataset,
    embedder: Embedder,
    args: argparse.Namespace,
    on_fold: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every fold of ``split`` (``on_fold`` sees each fold's summary as it is done)."""
    results = []
    for fold in folds_of(split, data):
        summary = evaluate_fold(fold, data, embedder, args).summary()
        results.append(summary)
        if on_fold is not None:
            on_fold(summary)
    out: dict[str, Any] = {"folds": results, "summary": summarise(split, results)}
    if split == "cross-rate" and data.base_fs == 12000.0:
        out["rate_invariance"] = rate_invariance(data, embedder, args)
    return out


def summarise(split: str, folds: list[dict[str, Any]]) -> dict[str, Any]:
    bas = [f["balanced_accuracy"] for f in folds if not math.isnan(f["balanced_accuracy"])]
    out: dict[str, Any] = {
        "mean_balanced_accuracy": float(np.mean(bas)) if bas else math.nan,
        "min_balanced_accuracy": float(np.min(bas)) if bas else math.nan,
        "unknown_rate": float(np.mean([f["unknown_rate"] for f in folds])) if folds else math.nan,
    }
    for key in ("reliability", "reliability_raw_share"):
        bins: dict[int, list[float]] = {}
        for f in folds:
            for b in (f.get(key) or {}).get("bins", []):
                acc = bins.setdefault(round(b["lo"] * 10), [0.0, 0.0, 0.0])
                acc[0] += b["n"]
                acc[1] += b["n"] * b["confidence"]
                acc[2] += b["n"] * b["accuracy"]
        n = sum(v[0] for v in bins.values())
        out[key] = {
            "bins": [
                {"lo": b / 10, "n": int(v[0]), "confidence": v[1] / v[0], "accuracy": v[2] / v[0]}
                for b, v in sorted(bins.items())
            ],
            "ece": sum(abs(v[1] - v[2]) for v in bins.values()) / n if n else math.nan,
        }
    if split == "held-out-class":
        out["unknown_share"] = {f["fold"]: f["unknown_rate"] for f in folds}
        out["called_otherwise"] = {
            f["fold"]: {k: v for k, v in f["labels_given"].items() if k != UNKNOWN} for f in folds
        }
    return out


def rate_invariance(data: Dataset, embedder: Embedder, args: argparse.Namespace) -> dict[str, Any]:
    """Each base-rate test recording of every LOFSO fold, against that fold's library, and
    its copies resampled (scipy.signal.resample_poly: polyphase, band-limited, Kaiser
    window) up to 48 and 96 kHz; and each fault recording made at another rate (CWRU's
    48 kHz records) against its copy down at the base rate, in the fold that holds its
    bearing out: same answers?"""
    rows = []
    other_rate = {
        w.record_id: (w.fs, f"{w.fault_size_in:g} in")
        for w in data.info
        if w.label != "normal" and not math.isclose(w.fs, data.base_fs)
    }

    def same_cut(record: str, feats: F32) -> npt.NDArray[np.bool_] | None:
        """The recording's own windows' unresolved lines (the same speed and bins at
        every rate: 1-s windows keep 1 Hz bins), when its copy is cut into as many."""
        rows = [i for i, w in enumerate(data.info) if w.record_id == record]
        if len(rows) != feats.shape[0]:
            return None
        return data.unresolved(embedder.line_names)[rows]

    for fold in folds_of("lofso", data):
        embed = embedder.embedding(fold.library)
        lib_vec = embed(data.features(embedder.config.view))[fold.library]
        labels = np.array([data.info[i].label for i in fold.library.tolist()])
        calibration = evaluate_fold(fold, data, embedder, args).calibration
        tested = sorted(
            {data.info[i].record_id for i in fold.test.tolist() if data.info[i].label != "normal"}
        )
        extra = sorted(r for r, (_, size) in other_rate.items() if size == fold.name)
        for record in [*tested, *extra]:
            answers = {}
            native = other_rate.get(record, (data.base_fs, ""))[0]
            rates = (native, *RATE_COPIES) if record in tested else (native, data.base_fs)
            for fs in rates:
                feats = data.copy_features(record, fs, embedder.config.view)
                scores, nbrs = ev.knn(lib_vec, embed(feats), args.k)
                verdicts = ev.window_verdicts(
                    labels,
                    scores,
                    nbrs,
                    policy=DecisionPolicy(absence=embedder.config.lines),
                    calibration=calibration,
                    evidence=(
                        embedder.lines(fold.library).read(feats, unresolved=same_cut(record, feats))
                        if embedder.config.lines
                        else None
                    ),
                )
                answers[fs] = ([v.label for v in verdicts], aggregate(verdicts).label)
            base = answers[native]
            rows.append(
                {
                    "fold": fold.name,
                    "record": record,
                    "answers": {f"{fs / 1000:g} kHz": a[1] for fs, a in answers.items()},
                    "same_answer": len({a[1] for a in answers.values()}) == 1,
                    "window_agreement": float(
                        np.mean(
                            [
                                np.mean([x == y for x, y in zip(base[0], a[0], strict=True)])
                                for fs, a in answers.items()
                                if fs != native
                            ]
                        )
                    ),
                }
            )
    return {
        "recordings": len(rows),
        "same_answer": sum(r["same_answer"] for r in rows),
        "window_agreement": float(np.mean([r["window_agreement"] for r in rows]))
        if rows
        else math.nan,
        "rows": rows,
    }


# --- transfer splits: a sensor position or a machine the library never saw -----------------

TRANSFER_SPLITS = ("sensor", "machine")


def transfer_fold(
    library: Dataset, test: Dataset, name: str, *, healthy_second_half: bool
) -> tuple[Dataset, ev.Fold]:
    """The library side of ``library`` (base-rate faults, healthy first half) against every
    window of ``test`` (``healthy_second_half``: its healthy windows' second half only,
    when they are the same recording seen by another sensor: time-disjoint from the
    library's half)."""
    data, test_rows = merged(library, test)
    lib_rows = np.array(
        [
            i
            for i, w in enumerate(library.info)
            if (w.label != "normal" and math.isclose(w.fs, library.base_fs))
            or (w.label == "normal" and w.segment == ev.FIRST_HALF)
        ],
        dtype=np.int64,
    )
    keep = [
        int(i)
        for i in test_rows.tolist()
        if not (
            healthy_second_half
            and data.info[i].label == "normal"
            and data.info[i].segment == ev.FIRST_HALF
        )
    ]
    notes = (
        f"library: {len(lib_rows)} windows of {len(library.recordings)} recordings",
        f"test: {len(keep)} windows of {len(test.recordings)} recordings ({name})",
    )
    split = "machine" if not healthy_second_half else "sensor"
    fold = ev.Fold(split, name, lib_rows, np.array(keep, dtype=np.int64), notes)
    problems = ev.leaks(fold, data.info)
    if problems:
        raise AssertionError("; ".join(problems))
    return data, fold


def run_transfer(
    library: Dataset,
    tests: Sequence[tuple[str, Dataset, bool]],
    config: Config,
    args: argparse.Namespace,
    on_fold: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """One fold per ``(name, test dataset, healthy_second_half)``, each with its own
    projection trained on ``library``'s side only."""
    results = []
    for name, test, second_half in tests:
        data, fold = transfer_fold(library, test, name, healthy_second_half=second_half)
        embedder = Embedder(data, config)
        summary = evaluate_fold(fold, data, embedder, args).summary()
        summary["retrieval"] = retrieval_quality(data, embedder, fold, args)
        results.append(summary)
        if on_fold is not None:
            on_fold(summary)
    split = results[0]["split"] if results else "transfer"
    return {"folds": results, "summary": summarise(split, results)}


def retrieval_quality(
    data: Dataset, embedder: Embedder, fold: ev.Fold, args: argparse.Namespace
) -> dict[str, Any]:
    """Retrieval alone: the top neighbour's class and the best cosine of fault windows."""
    vectors = embedder.vectors(fold.library)
    scores, rows = ev.knn(vectors[fold.library], vectors[fold.test], args.k)
    lib_labels = np.array([data.info[i].label for i in fold.library.tolist()])
    truth = np.array([data.info[i].label for i in fold.test.tolist()])
    faults = truth != "normal"
    top = lib_labels[rows[:, 0]]
    best = scores[:, 0]
    return {
        "top1_fault": float(np.mean(top[faults] == truth[faults])) if faults.any() else math.nan,
        "top1_all": float(np.mean(top == truth)),
        "best_cosine_fault_median": float(np.median(best[faults])) if faults.any() else math.nan,
        "best_cosine_fault_p05": float(np.quantile(best[faults], 0.05))
        if faults.any()
        else math.nan,
        "fault_above_min_similarity": float(np.mean(best[faults] >= POLICY.min_similarity))
        if faults.any()
        else math.nan,
    }
