"""Quick retrieval check of the spectrum encoder on CWRU (to be superseded by `faultline eval`).

kNN (k=5, cosine) over 1-s windows (hop 0.5 s) of the 12 kHz drive-end records plus the
one healthy record (97, 48 kHz, resampled to 12 kHz and split into time-disjoint halves:
one half in the library, the other tested, then swapped). Splits never put windows of one
recording on both sides:

* leave-one-load-out: library = the other three loads (fault records), test = this load;
* leave-one-fault-size-out: library = the other two sizes, test = this size (a bearing the
  library has never seen: the split that measures diagnosis, not memory);
* cross-rate: library = all 12 kHz records, test = the 48 kHz records 109/122/135 sent as
  48 kHz windows (the encoder resamples them).

Prints balanced accuracy (normal/inner/outer/ball) per fold, and the same with blocks
ablated (e.g. without the order-envelope features). Usage:

    .venv/bin/python bench/quick_eval.py [--data-dir DIR] [--view window|spectrum]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from faultline.encoders.dsp import magnitude_spectrum, resample_to
from faultline.encoders.features import FeatureParams
from faultline.encoders.signals import Measurement, Window
from faultline.encoders.spectrum import SpectrumEncoder, View
from faultline.fault_library.recordings import (
    Recording,
    iter_windows,
    read_manifest,
    read_recording,
)

CLASSES = ("normal", "inner_race", "outer_race", "ball")
TARGET_FS = 12000.0


@dataclass
class Item:
    window: Window
    label: str
    record: str
    load: int
    size: float
    fs: float
    half: int  # 0/1 for the healthy record's halves, -1 otherwise


def default_data_dir() -> Path:
    env = os.environ.get("FAULTLINE_CWRU_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "cwru"


def load_items(data_dir: Path, *, with_rpm: bool = True) -> list[Item]:
    items: list[Item] = []
    for entry in read_manifest(data_dir):
        rec = read_recording(entry.path, fs=entry.fs)
        rec = replace(rec, rpm=entry.rpm if with_rpm else None)
        load = entry.load_hp or 0
        if entry.label == "normal":
            rec = Recording(
                signal=resample_to(rec.signal, rec.fs, TARGET_FS).astype(np.float32),
                fs=TARGET_FS,
                rpm=rec.rpm,
                geometry=rec.geometry,
                source=rec.source,
                meta=rec.meta,
            )
            half_s = rec.duration_s / 2
            for half, (a, b) in enumerate(((0.0, half_s), (half_s, rec.duration_s))):
                for w in iter_windows(rec, entry.record_id, hop_s=0.5, start_s=a, stop_s=b):
                    items.append(Item(w, "normal", entry.record_id, load, 0.0, rec.fs, half))
            continue
        for w in iter_windows(rec, entry.record_id, hop_s=0.5):
            items.append(
                Item(w, entry.label, entry.record_id, load, entry.fault_size_in, rec.fs, -1)
            )
    return items


def knn_predict(
    lib: npt.NDArray[np.float32],
    lib_labels: Sequence[str],
    test: npt.NDArray[np.float32],
    k: int = 5,
) -> list[str]:
    sims = test @ lib.T
    top = np.argsort(-sims, axis=1)[:, :k]
    out = []
    for row, idx in enumerate(top):
        votes: dict[str, tuple[int, float]] = {}
        for j in idx:
            c, s = votes.get(lib_labels[j], (0, 0.0))
            votes[lib_labels[j]] = (c + 1, s + float(sims[row, j]))
        out.append(max(votes.items(), key=lambda kv: kv[1])[0])
    return out


def balanced_accuracy(truth: Sequence[str], pred: Sequence[str]) -> tuple[float, dict[str, float]]:
    recalls = {}
    for c in CLASSES:
        idx = [i for i, t in enumerate(truth) if t == c]
        if idx:
            recalls[c] = sum(pred[i] == c for i in idx) / len(idx)
    return float(np.mean(list(recalls.values()))), recalls


def run_split(
    items: list[Item],
    vecs: npt.NDArray[np.float32],
    name: str,
    test_of: dict[str, object],
    centre: bool = False,
) -> list[float]:
    """Evaluate folds; returns each fold's balanced accuracy (mean over the two halves).

    ``centre``: subtract the library side's mean vector (then renormalise) inside each
    fold, i.e. what a standardisation fitted on the library alone would add.
    """
    scores = []
    fault = [i for i, it in enumerate(items) if it.label != "normal" and it.fs == TARGET_FS]
    for fold, held in test_of.items():
        fold_scores = []
        recalls_acc: dict[str, list[float]] = {}
        misses: dict[str, int] = {}
        for lib_half in (0, 1):
            lib = [i for i in fault if not held(items[i])]  # type: ignore[operator]
            test = [i for i in fault if held(items[i])]  # type: ignore[operator]
            lib += [i for i, it in enumerate(items) if it.half == lib_half]
            test += [i for i, it in enumerate(items) if it.half == 1 - lib_half]
            v = vecs
            if centre:
                v = vecs - vecs[lib].mean(axis=0)
                v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
            pred = knn_predict(v[lib], [items[i].label for i in lib], v[test])
            truth = [items[i].label for i in test]
            ba, rec = balanced_accuracy(truth, pred)
            fold_scores.append(ba)
            for c, r in rec.items():
                recalls_acc.setdefault(c, []).append(r)
            for i, p in zip(test, pred, strict=True):
                if p != items[i].label and lib_half == 0:
                    key = f"{items[i].record}->{p}"
                    misses[key] = misses.get(key, 0) + 1
        score = float(np.mean(fold_scores))
        scores.append(score)
        rec_txt = " ".join(f"{c[:5]}={np.mean(v):.2f}" for c, v in recalls_acc.items())
        worst = sorted(misses.items(), key=lambda kv: -kv[1])[:4]
        print(f"  {name} {fold:>6}: bal.acc {score:.3f}  [{rec_txt}]  misses: {worst}")
    print(f"  {name} mean: {np.mean(scores):.3f}")
    return scores


def cross_rate(items: list[Item], vecs: npt.NDArray[np.float32]) -> None:
    lib = [i for i, it in enumerate(items) if it.fs == TARGET_FS and it.half != 1]
    test = [i for i, it in enumerate(items) if it.fs != TARGET_FS and it.label != "normal"]
    pred = knn_predict(vecs[lib], [items[i].label for i in lib], vecs[test])
    for rec in sorted({items[i].record for i in test}):
        idx = [j for j, i in enumerate(test) if items[i].record == rec]
        label = items[test[idx[0]]].label
        ok = sum(pred[j] == label for j in idx)
        print(f"  cross-rate {rec} ({label}): {ok}/{len(idx)} windows correct")


def evaluate(
    items: list[Item], vecs: npt.NDArray[np.float32], title: str, centre: bool = False
) -> None:
    print(title)
    loads = {f"{h}hp": (lambda it, h=h: it.load == h) for h in range(4)}
    sizes = {f"{s:.3f}": (lambda it, s=s: abs(it.size - s) < 1e-6) for s in (0.007, 0.014, 0.021)}
    run_split(items, vecs, "LOLO ", loads, centre)  # type: ignore[arg-type]
    run_split(items, vecs, "LOFSO", sizes, centre)  # type: ignore[arg-type]
    cross_rate(items, vecs)


def encode_with(
    encoder: SpectrumEncoder, view: View, feats: npt.NDArray[np.float32], zero: Sequence[str] = ()
) -> npt.NDArray[np.float32]:
    """encode() from cached features, optionally with some blocks' weights set to 0."""
    zeroed: dict[str, Any] = {f"w_{b}": 0.0 for b in zero}
    params = replace(encoder.params, **zeroed)
    weights = SpectrumEncoder(encoder.target_fs, encoder.window_s, params=params).weights(view)
    w = feats * weights
    out: npt.NDArray[np.float32] = (
        w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)
    ).astype(np.float32)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--view", choices=("window", "spectrum", "both"), default="both")
    parser.add_argument(
        "--estimate-rpm",
        action="store_true",
        help="drop the files' rpm so the encoder estimates it",
    )
    parser.add_argument(
        "--centre", action="store_true", help="also show results with in-fold library-mean centring"
    )
    args = parser.parse_args()
    items = load_items(args.data_dir, with_rpm=not args.estimate_rpm)
    encoder = SpectrumEncoder(TARGET_FS, 1.0, params=FeatureParams())
    print(f"{len(items)} windows; model {encoder.model_id}")
    views: list[View] = ["window", "spectrum"] if args.view == "both" else [args.view]
    for view in views:
        measurements: list[Measurement] = [
            it.window if view == "window" else magnitude_spectrum(it.window) for it in items
        ]
        t0 = time.perf_counter()
        feats = np.concatenate(
            [encoder.features(measurements[i : i + 128]) for i in range(0, len(items), 128)]
        )
        dt = time.perf_counter() - t0
        print(f"\n=== view {view}: dim {encoder.dim(view)}, features {len(items) / dt:.0f}/s")
        evaluate(items, encode_with(encoder, view, feats), f"[{view}] all blocks")
        if args.centre:
            evaluate(items, encode_with(encoder, view, feats), f"[{view}] centred", centre=True)
        ablations: list[tuple[str, ...]] = [
            ("comb_lines", "comb_orders"),
            ("comb_lines", "comb_orders", "raw_lines"),  # no order axis at all
        ]
        if view == "window":
            ablations = [
                ("env_lines", "env_orders"),
                ("env_lines", "env_orders", "comb_lines", "comb_orders"),
                ("env_lines", "env_orders", "comb_lines", "comb_orders", "raw_lines"),
                ("time", "time_gain"),
            ]
        for zero in ablations:
            evaluate(items, encode_with(encoder, view, feats, zero), f"[{view}] without {zero}")


if __name__ == "__main__":
    main()
