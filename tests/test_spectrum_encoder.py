"""SpectrumEncoder on real CWRU windows: contract, rate invariance, physics, speed estimate."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from faultline.encoders.blocks import window_blocks
from faultline.encoders.dsp import magnitude_spectrum, resample_to
from faultline.encoders.features import FeatureParams
from faultline.encoders.signals import Window
from faultline.encoders.spectrum import MODEL_FAMILY, SpectrumEncoder
from faultline.fault_library.recordings import iter_windows, read_recording


@pytest.fixture(scope="module")
def encoder() -> SpectrumEncoder:
    return SpectrumEncoder()


def windows(cwru_dir: Path, rel: str, n: int, *, rpm: bool = True) -> list[Window]:
    fs = 48000.0 if rel.startswith(("48k", "normal")) else 12000.0
    rec = read_recording(cwru_dir / rel, fs=fs)
    out = list(iter_windows(rec, rel, window_s=1.0, hop_s=1.0))[:n]
    return out if rpm else [replace(w, rpm=None) for w in out]


def test_encode_contract(encoder: SpectrumEncoder, cwru_dir: Path) -> None:
    items = windows(cwru_dir, "12k_drive_end/105.mat", 3) + windows(
        cwru_dir, "12k_drive_end/130.mat", 2
    )
    vecs = encoder.encode(items)
    assert vecs.shape == (5, encoder.dim("window"))
    assert vecs.dtype == np.float32
    assert np.all(np.isfinite(vecs))
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(vecs, encoder.encode(items))  # deterministic
    one_by_one = np.concatenate([encoder.encode([w]) for w in items])
    np.testing.assert_allclose(one_by_one, vecs, atol=1e-5)  # batching changes nothing
    assert encoder.features(items).shape == (5, encoder.n_features("window"))
    assert len(encoder.feature_names("window")) == encoder.n_features("window")


def test_model_id_tracks_parameters(encoder: SpectrumEncoder) -> None:
    assert encoder.model_id.startswith(MODEL_FAMILY + "-")
    assert SpectrumEncoder().model_id == encoder.model_id
    # Other features need another (or no) projection: compare the v1 ids.
    plain = SpectrumEncoder(projection=None)
    assert plain.model_id == encoder.feature_id != encoder.model_id
    other = SpectrumEncoder(params=replace(FeatureParams(), search_tol=0.02), projection=None)
    assert other.model_id != plain.model_id
    assert SpectrumEncoder(target_fs=24000.0, projection=None).model_id != plain.model_id


def test_same_window_at_48k_encodes_alike(encoder: SpectrumEncoder, cwru_dir: Path) -> None:
    for w in windows(cwru_dir, "12k_drive_end/105.mat", 1) + windows(
        cwru_dir, "12k_drive_end/237.mat", 1
    ):
        up = resample_to(w.samples, 12000.0, 48000.0).astype(np.float32)
        w48 = replace(w, fs=48000.0, samples=up)
        a, b = encoder.encode([w]), encoder.encode([w48])
        # Measured 0.78 on 105: the band is chosen at the native rate and the 48 kHz copy
        # offers bands up to 21.6 kHz (the rate target is missed; see EVALUATION.md).
        assert float(a[0] @ b[0]) > 0.75


def test_outer_race_window_shows_bpfo(encoder: SpectrumEncoder, cwru_dir: Path) -> None:
    names = encoder.feature_names("window")
    bpfo = names.index("env_bpfo_1")
    bpfi = names.index("env_bpfi_1")
    outer = encoder.features(windows(cwru_dir, "12k_drive_end/130.mat", 2))
    inner = encoder.features(windows(cwru_dir, "12k_drive_end/105.mat", 2))
    assert outer[:, bpfo].min() > inner[:, bpfo].max()
    assert inner[:, bpfi].min() > outer[:, bpfi].max()


def test_spectrum_view_from_sensor_spectra(encoder: SpectrumEncoder, cwru_dir: Path) -> None:
    ws = windows(cwru_dir, "12k_drive_end/130.mat", 2) + windows(
        cwru_dir, "48k_drive_end/135.mat", 1
    )
    frames = [magnitude_spectrum(w) for w in ws]
    assert encoder.view_of(frames[0]) == "spectrum"
    vecs = encoder.encode(frames)
    assert vecs.shape == (3, encoder.dim("spectrum"))
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # The same fault recorded at 48 kHz lands nearer than an inner-race spectrum does.
    inner = encoder.encode([magnitude_spectrum(windows(cwru_dir, "12k_drive_end/105.mat", 1)[0])])
    assert float(vecs[0] @ vecs[2]) > float(vecs[0] @ inner[0])


def test_mixed_views_rejected(encoder: SpectrumEncoder, cwru_dir: Path) -> None:
    w = windows(cwru_dir, "12k_drive_end/105.mat", 1)[0]
    with pytest.raises(ValueError, match="one view"):
        encoder.encode([w, magnitude_spectrum(w)])


def test_describe_rpm_message(encoder: SpectrumEncoder, cwru_dir: Path) -> None:
    w = windows(cwru_dir, "12k_drive_end/105.mat", 1)[0]
    assert encoder.describe_rpm(w) == (1797.0, "message")


# One record per load (and the healthy 48 kHz record): the speed estimate must land within
# 1 % of the file's rpm for at least 9 windows in 10 (719/720 measured over all CWRU windows).
RPM_RECORDS = [
    ("normal/97.mat", 1796.0),
    ("12k_drive_end/105.mat", 1797.0),
    ("12k_drive_end/131.mat", 1773.0),
    ("12k_drive_end/187.mat", 1749.0),
    ("12k_drive_end/212.mat", 1728.0),
    ("12k_drive_end/237.mat", 1721.0),
]


def test_rpm_estimated_within_one_percent(encoder: SpectrumEncoder, cwru_dir: Path) -> None:
    hits = total = 0
    for rel, rpm in RPM_RECORDS:
        ws = windows(cwru_dir, rel, 4, rpm=False)
        encoder.encode(ws)  # estimates and remembers; describe_rpm then reuses it
        for w in ws:
            est, source = encoder.describe_rpm(w)
            assert source == "estimated"
            hits += abs(est / rpm - 1) < 0.01
            total += 1
        frame_est, frame_source = encoder.describe_rpm(magnitude_spectrum(ws[0]))
        assert frame_source == "estimated"
        hits += abs(frame_est / rpm - 1) < 0.01
        total += 1
    assert hits >= 0.9 * total, f"{hits}/{total} within 1 %"


def test_shared_blocks_give_the_same_features(encoder: SpectrumEncoder, cwru_dir: Path) -> None:
    """diagnose_batch hands the encoder the blocks it shares with the quality gate and the
    velocity: the features must be those the encoder computes on its own, also for a
    window longer than window_s (the encoder reads its first window_s)."""
    items = windows(cwru_dir, "12k_drive_end/105.mat", 3) + windows(cwru_dir, "normal/97.mat", 2)
    rec = read_recording(cwru_dir / "12k_drive_end/130.mat", fs=12000.0)
    items.append(next(iter_windows(rec, "long", window_s=1.5)))
    alone, _ = encoder.encode_with_features(items)
    shared, _ = encoder.encode_with_features(items, blocks=window_blocks(items))
    assert np.array_equal(alone, shared)
    with pytest.raises(ValueError, match="window_blocks"):
        encoder.encode_with_features(items[:2], blocks=window_blocks(items))
