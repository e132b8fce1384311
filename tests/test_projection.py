"""Spectrum projection: ONNX == numpy, pinned files, deterministic training that learns."""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from faultline.encoders.dsp import magnitude_spectrum
from faultline.encoders.features import FeatureParams
from faultline.encoders.projection import (
    MANIFEST_NAME,
    OnnxRunner,
    Projection,
    ProjectionError,
    ProjectionSet,
    load_manifest,
)
from faultline.encoders.signals import Window
from faultline.encoders.spectrum import SpectrumEncoder, View
from faultline.encoders.training import train_projection
from faultline.fault_library.catalog import read_manifest
from faultline.fault_library.recordings import iter_windows, read_recording

MODELS = Path(__file__).resolve().parents[1] / "models"
F32 = npt.NDArray[np.float32]
V1 = SpectrumEncoder(projection=None)


@cache
def record_windows(cwru_dir: Path, record: str, n: int) -> tuple[Window, ...]:
    """The first ``n`` 1-s windows (hop 1 s) of a 12-kHz record, with the file's rpm."""
    entry = next(e for e in read_manifest(cwru_dir) if e.record_id == record)
    rec = read_recording(entry.path, fs=entry.fs, rpm=entry.rpm)
    return tuple(iter_windows(rec, record, window_s=1.0, hop_s=1.0))[:n]


def features(cwru_dir: Path, records: list[str], n: int, view: View) -> F32:
    ws = [w for r in records for w in record_windows(cwru_dir, r, n)]
    return V1.features(ws if view == "window" else [magnitude_spectrum(w) for w in ws])


MIXED = ["105", "118", "130", "171", "186", "199", "212", "224", "236"]


@pytest.mark.parametrize("view", ["window", "spectrum"])
def test_onnx_matches_numpy_on_real_features(cwru_dir: Path, view: View) -> None:
    feats = features(cwru_dir, MIXED, 3, view)
    spec = load_manifest()["views"][view]
    data = (MODELS / spec["file"]).read_bytes()
    reference = Projection.from_onnx(data)
    assert reference.to_onnx() == data  # export is deterministic: same parameters, same bytes
    onnx_out = ProjectionSet.load()(view, feats)
    numpy_out = reference.apply(feats)
    assert onnx_out.shape == (len(feats), 256)
    assert onnx_out.dtype == np.float32
    assert float(np.abs(onnx_out - numpy_out).max()) < 1e-5
    np.testing.assert_allclose(np.linalg.norm(onnx_out, axis=1), 1.0, atol=1e-5)
    # One session call for a batch equals row-by-row calls.
    runner = OnnxRunner(data)
    rows = np.concatenate([runner(feats[i : i + 1]) for i in range(len(feats))])
    assert float(np.abs(rows - onnx_out).max()) < 1e-6


def test_tampered_model_is_refused_by_name(tmp_path: Path) -> None:
    for name in (MANIFEST_NAME, "spectrum-window.onnx", "spectrum-spectrum.onnx"):
        shutil.copy(MODELS / name, tmp_path / name)
    assert ProjectionSet.load(tmp_path).sha256 == ProjectionSet.load().sha256
    target = tmp_path / "spectrum-spectrum.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit inside the weights
    target.write_bytes(bytes(data))
    with pytest.raises(ProjectionError, match=r"spectrum-spectrum\.onnx has sha256"):
        ProjectionSet.load(tmp_path)
    target.unlink()
    with pytest.raises(ProjectionError, match=r"cannot read.*spectrum-spectrum\.onnx"):
        ProjectionSet.load(tmp_path)


def test_manifest_describes_the_files() -> None:
    manifest = json.loads((MODELS / MANIFEST_NAME).read_text())
    assert manifest["features"]["feature_id"] == V1.feature_id
    for view in ("window", "spectrum"):
        spec = manifest["views"][view]
        assert spec["input"] == {
            "name": "features",
            "dtype": "float32",
            "shape": ["batch", V1.n_features(view)],
        }
        assert spec["output"]["shape"] == ["batch", 256]
        assert spec["feature_names"] == list(V1.feature_names(view))
    lofso = manifest["evaluation"]["results"]["window"]["leave_one_fault_size_out"]
    assert set(lofso["projection_retrained_per_fold"]["folds"]) == {"0.007", "0.014", "0.021"}


def test_encoder_default_runs_shipped_models(cwru_dir: Path) -> None:
    encoder = SpectrumEncoder()
    shipped = ProjectionSet.load()
    assert encoder.projection is not None
    assert encoder.model_sha256 == shipped.sha256
    assert encoder.model_id == f"{V1.feature_id}-proj-{shipped.sha256[:12]}"
    assert encoder.dim("window") == encoder.dim("spectrum") == 256
    ws = list(record_windows(cwru_dir, "130", 4))
    vecs = encoder.encode(ws)
    assert vecs.shape == (4, 256)
    expected = shipped("window", V1.features(ws))
    assert float(np.abs(vecs - expected).max()) < 1e-6
    frames = encoder.encode([magnitude_spectrum(w) for w in ws])
    np.testing.assert_allclose(np.linalg.norm(frames, axis=1), 1.0, atol=1e-5)
    # v1 for ablations, with its own id and dimension.
    plain = encoder.with_projection(None)
    assert plain.model_id == V1.feature_id != encoder.model_id
    assert plain.encode(ws).shape == (4, V1.n_features("window"))
    # A shipped model trained on other features is refused, not silently misapplied.
    with pytest.raises(ProjectionError, match="retrain"):
        SpectrumEncoder(params=FeatureParams(search_tol=0.02))


def _fold(cwru_dir: Path, held: float, view: View = "window") -> tuple[F32, list[str], ...]:
    """Library: two fault sizes; test: the third (other bearings), 4 windows per record."""
    entries = [e for e in read_manifest(cwru_dir) if e.fs == 12000.0 and e.label != "normal"]
    lib = [e for e in entries if abs(e.fault_size_in - held) > 1e-6]
    test = [e for e in entries if abs(e.fault_size_in - held) < 1e-6]
    out: list[object] = []
    for side in (lib, test):
        out.append(features(cwru_dir, [e.record_id for e in side], 4, view))
        out.append([e.label for e in side for _ in range(4)])
        out.append([e.record_id for e in side for _ in range(4)])
    return tuple(out)  # type: ignore[return-value]


def _knn_balanced_accuracy(lib: F32, lib_labels: list[str], test: F32, truth: list[str]) -> float:
    top = np.argsort(-(test @ lib.T), axis=1)[:, :5]
    pred = []
    for row in top:
        labels, counts = np.unique([lib_labels[j] for j in row], return_counts=True)
        pred.append(str(labels[np.argmax(counts)]))
    recalls = [
        np.mean([p == c for p, t in zip(pred, truth, strict=True) if t == c]) for c in set(truth)
    ]
    return float(np.mean(recalls))


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason=(
        "issue 9 open: on the v2 features the NCA projection (0.52) is below random "
        "projections (0.69-0.73) on the unseen 0.021 in bearings"
    ),
)
def test_training_is_deterministic_and_beats_random_on_unseen_bearings(cwru_dir: Path) -> None:
    x, y, g, xt, yt, _ = _fold(cwru_dir, 0.021)
    init = V1.weights("window")
    a = train_projection(x, y, g, init_weights=init, seed=3)
    b = train_projection(x, y, g, init_weights=init, seed=3)
    assert a.to_onnx() == b.to_onnx()
    assert a.meta["iterations"] > 0
    assert a.meta["loss_end"] < a.meta["loss_start"]
    c = train_projection(x, y, g, init_weights=init, seed=4)
    assert not np.array_equal(a.w1, c.w1)  # the seed matters (subsample, rotation)

    trained = _knn_balanced_accuracy(a.apply(x), y, a.apply(xt), yt)
    v1 = _knn_balanced_accuracy(
        V1.encode_features("window", x), y, V1.encode_features("window", xt), yt
    )
    randoms = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        rand = Projection(
            mean=a.mean,
            inv_std=a.inv_std,
            w1=rng.standard_normal(a.w1.shape).astype(np.float32),
            b1=np.zeros(a.dim, dtype=np.float32),
        )
        randoms.append(_knn_balanced_accuracy(rand.apply(x), y, rand.apply(xt), yt))
    # Measured: trained 1.000, untrained v1 0.917, random 0.875-0.958.
    assert trained > max(randoms), (trained, randoms)
    assert trained > v1, (trained, v1)


def test_in_memory_projection_runs_in_the_encoder(cwru_dir: Path) -> None:
    folds = {view: _fold(cwru_dir, 0.014, view) for view in ("window", "spectrum")}
    projections = {
        view: train_projection(x, y, g, init_weights=V1.weights(view))
        for view, (x, y, g, *_) in folds.items()
    }
    xt = folds["spectrum"][3]
    numpy_set = ProjectionSet.from_projections(projections, feature_id=V1.feature_id)
    onnx_set = ProjectionSet.from_projections(projections, backend="onnx")
    assert numpy_set.sha256 == onnx_set.sha256
    enc = V1.with_projection(numpy_set)
    assert enc.model_id != SpectrumEncoder().model_id
    assert enc.model_id.endswith(numpy_set.sha256[:12])
    a = enc.encode_features("spectrum", xt)
    b = V1.with_projection(onnx_set).encode_features("spectrum", xt)
    assert float(np.abs(a - b).max()) < 1e-5
    assert a.shape == (len(xt), 256)
