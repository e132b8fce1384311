"""Train the spectrum projection on CWRU, evaluate it fold-honestly, export ONNX + manifest.

    python models/train_spectrum.py --cwru ../shared/data/cwru --out models/

Data: the 36 12-kHz drive-end fault records (DE channel) and the healthy record 97 (48 kHz,
resampled to 12 kHz), as 1-s windows with a 0.5-s hop. Record 97 is cut into time-disjoint
halves (the evaluation puts one half in the library and tests the other). The three 48-kHz
fault records (109/122/135) are never trained on: they are the cross-rate test.

Evaluation (before the final fit, printed and written to the manifest): kNN (k=5, cosine)
with leave-one-fault-size-out and leave-one-load-out folds; the projection is **retrained
inside every fold on that fold's library side only**, and compared with the untrained v1
encoding on the same folds. Then the shipped model is trained on everything above and
scored on the 48-kHz records. Writes ``spectrum-window.onnx``, ``spectrum-spectrum.onnx``
and ``spectrum.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import scipy

from faultline.encoders.dsp import magnitude_spectrum, resample_to
from faultline.encoders.projection import INPUT_NAME, MANIFEST_NAME, OUTPUT_NAME, Projection
from faultline.encoders.signals import Measurement, Window
from faultline.encoders.spectrum import SpectrumEncoder, View
from faultline.encoders.training import TrainConfig, train_projection
from faultline.fault_library import evaluation as ev
from faultline.fault_library.catalog import read_manifest
from faultline.fault_library.recordings import iter_windows, read_recording

CLASSES = ev.CLASSES
VIEWS: tuple[View, ...] = ("window", "spectrum")
BASE_FS = 12000.0
HOP_S = 0.5
F32 = npt.NDArray[np.float32]
Embed = Callable[[F32], F32]


@dataclass(frozen=True)
class Item:
    window: Window
    label: str
    record: str
    load: int
    size: float
    fs: float
    half: int  # 0/1 for the healthy record's halves, -1 otherwise


HELD_OUT_LOAD_HP = 3


def load_items(data_dir: Path) -> tuple[list[Item], dict[str, str]]:
    """Windows of every record (file rpm attached) and each record's file sha256."""
    items: list[Item] = []
    hashes: dict[str, str] = {}
    for entry in read_manifest(data_dir):
        rec = read_recording(entry.path, fs=entry.fs, rpm=entry.rpm)
        hashes[entry.record_id] = entry.sha256 or ""
        load = entry.load_hp or 0
        if entry.label == "normal":
            signal = resample_to(rec.signal, rec.fs, BASE_FS).astype(np.float32)
            rec = replace(rec, signal=signal, fs=BASE_FS)
            half_s = rec.duration_s / 2
            for half, (a, b) in enumerate(((0.0, half_s), (half_s, rec.duration_s))):
                for w in iter_windows(rec, entry.record_id, hop_s=HOP_S, start_s=a, stop_s=b):
                    items.append(Item(w, "normal", entry.record_id, load, 0.0, BASE_FS, half))
            continue
        for w in iter_windows(rec, entry.record_id, hop_s=HOP_S):
            items.append(
                Item(w, entry.label, entry.record_id, load, entry.fault_size_in, entry.fs, -1)
            )
    return items, hashes


def knn_predict(lib: F32, lib_labels: Sequence[str], test: F32, k: int = 5) -> list[str]:
    """Majority of the k nearest (cosine), ties broken by summed similarity."""
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


def v1_embed(encoder: SpectrumEncoder, view: View) -> Embed:
    weights = encoder.weights(view).astype(np.float32)

    def embed(x: F32) -> F32:
        w = x * weights
        out: F32 = (w / np.maximum(np.linalg.norm(w, axis=1, keepdims=True), 1e-12)).astype(
            np.float32
        )
        return out

    return embed


def fit(
    items: Sequence[Item], feats: F32, idx: Sequence[int], init: npt.NDArray[np.float64]
) -> Projection:
    return train_projection(
        feats[list(idx)],
        [items[i].label for i in idx],
        [items[i].record for i in idx],
        init_weights=init,
        config=TrainConfig(),
    )


def run_split(
    items: Sequence[Item],
    feats: F32,
    folds: Mapping[str, Callable[[Item], bool]],
    make_embed: Callable[[Sequence[int]], Embed],
) -> dict[str, Any]:
    """Balanced accuracy per fold (mean over the two healthy halves) and the mean."""
    fault = [i for i, it in enumerate(items) if it.label != "normal" and it.fs == BASE_FS]
    result: dict[str, Any] = {"folds": {}}
    for name, held in folds.items():
        scores, recalls = [], dict.fromkeys(CLASSES, 0.0)
        for lib_half in (0, 1):
            lib = [i for i in fault if not held(items[i])]
            lib += [i for i, it in enumerate(items) if it.half == lib_half]
            test = [i for i in fault if held(items[i])]
            test += [i for i, it in enumerate(items) if it.half == 1 - lib_half]
            embed = make_embed(lib)
            pred = knn_predict(embed(feats[lib]), [items[i].label for i in lib], embed(feats[test]))
            truth = [items[i].label for i in test]
            scores.append(ev.balanced_accuracy(truth, pred))
            for c, r in ev.per_class_recall(truth, pred).items():
                recalls[c] += r / 2
        result["folds"][name] = {
            "balanced_accuracy": round(float(np.mean(scores)), 4),
            "recall": {c: round(r, 4) for c, r in recalls.items()},
        }
    result["mean"] = round(
        float(np.mean([f["balanced_accuracy"] for f in result["folds"].values()])), 4
    )
    return result


def evaluate(
    items: Sequence[Item], encoder: SpectrumEncoder, feats: dict[View, F32]
) -> dict[str, Any]:
    sizes = {f"{s:.3f}": (lambda it, s=s: abs(it.size - s) < 1e-6) for s in (0.007, 0.014, 0.021)}
    loads = {f"{h}hp": (lambda it, h=h: it.load == h) for h in range(4)}
    out: dict[str, Any] = {}
    for view in VIEWS:
        init = encoder.weights(view)
        x = feats[view]

        def trained(lib: Sequence[int], x: F32 = x, init: npt.NDArray[np.float64] = init) -> Embed:
            return fit(items, x, lib, init).apply

        def untrained(lib: Sequence[int], view: View = view) -> Embed:
            return v1_embed(encoder, view)

        out[view] = {}
        for split, folds in (("leave_one_fault_size_out", sizes), ("leave_one_load_out", loads)):
            out[view][split] = {
                "v1_features": run_split(items, x, folds, untrained),
                "projection_retrained_per_fold": run_split(items, x, folds, trained),
            }
            v1 = out[view][split]["v1_features"]
            pr = out[view][split]["projection_retrained_per_fold"]
            per_fold = "  ".join(
                f"{k} {a['balanced_accuracy']:.3f}->{b['balanced_accuracy']:.3f}"
                for (k, a), b in zip(v1["folds"].items(), pr["folds"].values(), strict=True)
            )
            print(f"[{view}] {split}: v1 {v1['mean']:.3f} -> projection {pr['mean']:.3f}")
            print(f"    per fold: {per_fold}")
    return out


def cross_rate(items: Sequence[Item], feats: F32, proj: Projection) -> dict[str, str]:
    """The shipped model (12 kHz training data only) on the 48-kHz fault records."""
    lib = [i for i, it in enumerate(items) if it.fs == BASE_FS and it.half != 1]
    test = [i for i, it in enumerate(items) if it.fs != BASE_FS]
    pred = knn_predict(
        proj.apply(feats[lib]), [items[i].label for i in lib], proj.apply(feats[test])
    )
    out = {}
    for rec in sorted({items[i].record for i in test}):
        rows = [j for j, i in enumerate(test) if items[i].record == rec]
        label = items[test[rows[0]]].label
        out[rec] = f"{sum(pred[j] == label for j in rows)}/{len(rows)} windows {label}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cwru", type=Path, required=True, help="folder with manifest.csv")
    parser.add_argument("--out", type=Path, required=True, help="where the models go")
    parser.add_argument("--skip-eval", action="store_true", help="fit and export only")
    args = parser.parse_args()
    started = time.perf_counter()
    encoder = SpectrumEncoder(BASE_FS, 1.0, projection=None)
    items, hashes = load_items(args.cwru)
    feats: dict[View, F32] = {}
    for view in VIEWS:
        ms: list[Measurement] = [
            it.window if view == "window" else magnitude_spectrum(it.window) for it in items
        ]
        feats[view] = np.concatenate(
            [encoder.features(ms[i : i + 256]) for i in range(0, len(ms), 256)]
        )
    print(f"{len(items)} windows, features {encoder.feature_id}")
    evaluation = {} if args.skip_eval else evaluate(items, encoder, feats)

    # The shipped model never sees what the demo and the end-to-end tests replay (the
    # 3 hp records and the second half of healthy record 97), so those stay held out for
    # the encoder as well as for the library.
    train = [
        i
        for i, it in enumerate(items)
        if it.fs == BASE_FS and it.load != HELD_OUT_LOAD_HP and it.half != 1
    ]
    records = sorted({items[i].record for i in train}, key=int)
    args.out.mkdir(parents=True, exist_ok=True)
    views: dict[str, Any] = {}
    cross: dict[str, Any] = {}
    for view in VIEWS:
        proj = fit(items, feats[view], train, encoder.weights(view))
        data = proj.to_onnx()
        name = f"spectrum-{view}.onnx"
        (args.out / name).write_bytes(data)
        # The exported graph must reproduce the numpy reference on the training windows.
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        onnx_out = session.run([OUTPUT_NAME], {INPUT_NAME: feats[view][train]})[0]
        diff = float(np.abs(onnx_out - proj.apply(feats[view][train])).max())
        cross[view] = cross_rate(items, feats[view], proj)
        print(
            f"[{view}] {name}: {proj.meta['seconds']} s, max |onnx - numpy| {diff:.2e}, "
            f"cross-rate {cross[view]}"
        )
        views[view] = {
            "file": name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data),
            "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", proj.n_features]},
            "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", proj.dim]},
            "feature_names": list(encoder.feature_names(view)),
            "training": {k: v for k, v in proj.meta.items() if k != "config"},
            "max_abs_diff_onnx_vs_numpy": diff,
        }
    manifest = {
        "name": "faultline-spectrum-projection",
        "task": "spectrum features -> 256-d L2-normalised embedding for kNN fault retrieval",
        "graph": "Sub(mean) -> Mul(1/std) -> MatMul(W) -> Add(b) -> L2 normalise "
        "(ReduceSumSquare, Max(1e-12), Sqrt, Div); opset 17, IR 8",
        "views": views,
        "features": {
            "feature_id": encoder.feature_id,
            "params_digest": encoder.params.digest(),
            "params": asdict(encoder.params),
            "target_fs": encoder.target_fs,
            "window_s": encoder.window_s,
        },
        "method": {
            "objective": "NCA (log form) on cosine similarity of the unit embeddings, "
            "softmax temperature tau; same-recording neighbours excluded from each window's "
            "softmax (classes with one recording keep them); class-balanced anchors",
            "init": "the v1 hand-weighted encoding (diag(weights * std) on standardised "
            "features, randomly rotated into 256 dims)",
            "regulariser": "decay * sum of squared changes from the initial map",
            "optimiser": "scipy L-BFGS-B, exact gradient",
            "hyper_parameters": asdict(TrainConfig()),
            "selection": "decay and tau picked on the same CWRU leave-one-fault-size-out "
            "folds from decay in {1e-3..1e3}, tau in {0.05, 0.1, 0.2, 0.3}, hidden tanh "
            "layer yes/no (no measurable gain: the map is linear), preferring the middle of "
            "the plateau (decay 30-300 all within 0.015): the figures below are optimistic "
            "by that choice",
        },
        "training_data": {
            "dataset": "CWRU bearing data (drive-end accelerometer, DE channel)",
            "records": {r: hashes[r] for r in records},
            "windows": len(train),
            "segments": "1-s windows, hop 0.5 s, from the start of each record; record 97 "
            "(48 kHz healthy) resampled to 12 kHz and windowed per time-disjoint half",
            "rpm": "the file's own rpm (manifest.csv)",
            "held_out": "48-kHz fault records 109, 122, 135 (cross-rate test); every 3 hp "
            "record and the second half of record 97 (what the demo and the end-to-end tests "
            "replay)",
        },
        "evaluation": {
            "protocol": "kNN k=5 cosine over 1-s windows; no recording on both sides; "
            "projection retrained inside each fold on the library side only; healthy "
            "record 97 split into time-disjoint halves (library one, test the other, then "
            "swapped; fold score is the mean)",
            "results": evaluation,
            "cross_rate_shipped_model": cross,
        },
        "environment": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "onnxruntime": ort.__version__,
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    (args.out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out / MANIFEST_NAME} in {manifest['seconds']} s")


if __name__ == "__main__":
    main()
