"""Reading recordings in every format, windows, manifests and the shipped demo set.

All signals come from the real CWRU files; the .wav/.csv/.npz variants are written in a
temp folder from a real slice so that the formats can be compared sample by sample.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy.io import loadmat, savemat, wavfile

from faultline.encoders.geometry import BearingGeometry, bearing_preset
from faultline.fault_library import demo
from faultline.fault_library.catalog import ManifestEntry, read_manifest, verify_sha256
from faultline.fault_library.demo.derive import HARD_LIMIT_BYTES, derive_record
from faultline.fault_library.recordings import (
    Recording,
    RecordingError,
    iter_windows,
    read_recording,
)

DEMO_DIR = Path(demo.__file__).resolve().parent


@pytest.fixture(scope="module")
def rec105(cwru_dir: Path) -> Recording:
    return read_recording(cwru_dir / "12k_drive_end/105.mat")


@pytest.fixture(scope="module")
def raw105(cwru_dir: Path) -> npt.NDArray[np.float64]:
    return np.asarray(loadmat(str(cwru_dir / "12k_drive_end/105.mat"))["X105_DE_time"]).ravel()


# --- .mat ---------------------------------------------------------------------------------


def test_cwru_mat_reads_record_105(rec105: Recording, raw105: npt.NDArray[np.float64]) -> None:
    assert rec105.fs == 12000.0
    assert rec105.meta["fs_source"] == "manifest"
    assert rec105.rpm == 1797.0
    assert rec105.signal.shape == (121265,)
    assert rec105.signal.dtype == np.float32
    assert rec105.meta["key"] == "X105_DE_time"
    assert rec105.geometry is None
    assert rec105.duration_s == pytest.approx(121265 / 12000)
    np.testing.assert_array_equal(rec105.signal, raw105.astype(np.float32))


def test_normal_97_takes_48k_from_manifest(cwru_dir: Path) -> None:
    # the folder "normal" says nothing about the rate: only the manifest knows 48 kHz
    rec = read_recording(cwru_dir / "normal/97.mat")
    assert (rec.fs, rec.rpm, len(rec.signal)) == (48000.0, 1796.0, 243938)


def test_mat_fs_from_folder_name_or_error(cwru_dir: Path, tmp_path: Path) -> None:
    src = cwru_dir / "12k_drive_end/105.mat"
    for folder, expected in (("48k_bench", 48000.0), ("12K", 12000.0)):
        (tmp_path / folder).mkdir()
        shutil.copy(src, tmp_path / folder / "105.mat")
        rec = read_recording(tmp_path / folder / "105.mat")
        assert (rec.fs, rec.meta["fs_source"]) == (expected, "folder name")
    (tmp_path / "misc").mkdir()
    lone = tmp_path / "misc" / "105.mat"
    shutil.copy(src, lone)
    with pytest.raises(RecordingError, match=r"sampling rate unknown.*pass it with --fs") as err:
        read_recording(lone)
    assert str(err.value).startswith(f"{lone}: ")
    assert read_recording(lone, fs=12000).meta["fs_source"] == "argument"


def test_mat_picks_keys_by_record_number(raw105: npt.NDArray[np.float64], tmp_path: Path) -> None:
    a, b = raw105[:5000], raw105[5000:10000]
    # like the original 99.mat, which also carries a copy of record 98
    savemat(
        tmp_path / "99.mat",
        {
            "X098_DE_time": a[:, None],
            "X098RPM": np.uint16(1772),
            "X099_DE_time": b[:, None],
            "X099RPM": np.uint16(1750),
        },
    )
    rec = read_recording(tmp_path / "99.mat", fs=12000)
    np.testing.assert_array_equal(rec.signal, b.astype(np.float32))
    assert (rec.rpm, rec.meta["key"]) == (1750.0, "X099_DE_time")

    # no key for the file's number: the single *_DE_time key is used, with its own RPM
    savemat(tmp_path / "run7.mat", {"X123_DE_time": a[:, None], "X123RPM": np.uint16(1730)})
    rec = read_recording(tmp_path / "run7.mat", fs=12000)
    np.testing.assert_array_equal(rec.signal, a.astype(np.float32))
    assert rec.rpm == 1730.0

    # two candidates and no record number match: refuse and list the keys
    shutil.copy(tmp_path / "99.mat", tmp_path / "7.mat")
    with pytest.raises(RecordingError) as err:
        read_recording(tmp_path / "7.mat", fs=12000)
    message = str(err.value)
    assert "'X007_DE_time' or exactly one key ending in '_DE_time'" in message
    assert "keys present: X098RPM, X098_DE_time, X099RPM, X099_DE_time" in message


def test_mat_fan_end_channel(cwru_dir: Path) -> None:
    rec = read_recording(cwru_dir / "12k_drive_end/105.mat", channel="FE")
    assert rec.meta["key"] == "X105_FE_time"
    assert len(rec.signal) == 121265


# --- .npz / .wav / .csv ---------------------------------------------------------------------


def test_npz_honours_geometry_keys(raw105: npt.NDArray[np.float64], tmp_path: Path) -> None:
    path = tmp_path / "rec.npz"
    np.savez(
        path,
        signal=raw105[:24000],
        fs=12000.0,
        rpm=1797,
        n_balls=8,
        ball_diameter=0.2656,
        pitch_diameter=1.122,
        contact_angle_deg=5.0,
        label="inner_race",
    )
    rec = read_recording(path)
    assert rec.geometry == BearingGeometry(8, 0.2656, 1.122, 5.0, "custom")
    assert (rec.fs, rec.rpm, rec.meta["label"]) == (12000.0, 1797.0, "inner_race")
    np.testing.assert_array_equal(rec.signal, raw105[:24000].astype(np.float32))

    np.savez(path, signal=raw105[:24000], fs=12000.0, bearing="6203")
    assert read_recording(path).geometry == bearing_preset("6203")

    np.savez(path, signal=raw105[:24000], fs=12000.0, n_balls=9, ball_diameter=0.3)
    with pytest.raises(RecordingError, match="incomplete bearing geometry: has n_balls, "):
        read_recording(path)


def test_wav_and_csv_give_the_same_samples(rec105: Recording, tmp_path: Path) -> None:
    piece = rec105.signal[:12000]

    wavfile.write(tmp_path / "f32.wav", 12000, piece)
    rec = read_recording(tmp_path / "f32.wav")
    assert rec.fs == 12000.0
    np.testing.assert_array_equal(rec.signal, piece)

    scale = 32767 / float(np.max(np.abs(piece)))
    ints = np.round(piece * scale).astype(np.int16)
    wavfile.write(tmp_path / "stereo.wav", 12000, np.stack([ints // 2, ints], axis=1))
    rec = read_recording(tmp_path / "stereo.wav", channel="1")
    np.testing.assert_allclose(rec.signal, piece * scale / 32768, atol=1 / 32768)
    first = read_recording(tmp_path / "stereo.wav")  # "DE" is no index: first channel
    np.testing.assert_allclose(first.signal, (ints // 2) / 32768, atol=1e-7)

    lines = ["time,DE"] + [f"{i / 12000!r},{float(x)!r}" for i, x in enumerate(piece)]
    (tmp_path / "rec.csv").write_text("\n".join(lines) + "\n")
    rec = read_recording(tmp_path / "rec.csv")
    assert rec.fs == pytest.approx(12000.0, rel=1e-9)
    np.testing.assert_array_equal(rec.signal, piece)

    (tmp_path / "plain.csv").write_text("\n".join(repr(float(x)) for x in piece))
    np.testing.assert_array_equal(read_recording(tmp_path / "plain.csv", fs=12000).signal, piece)
    with pytest.raises(RecordingError, match="sampling rate unknown"):
        read_recording(tmp_path / "plain.csv")


def test_explicit_arguments_override_the_file(cwru_dir: Path, tmp_path: Path) -> None:
    fan_end = bearing_preset("6203")
    rec = read_recording(cwru_dir / "12k_drive_end/105.mat", fs=48000, rpm=1700, geometry=fan_end)
    assert (rec.fs, rec.rpm, rec.geometry) == (48000.0, 1700.0, fan_end)
    path = tmp_path / "r.npz"
    np.savez(path, signal=rec.signal, fs=12000.0, rpm=1797.0, bearing="6205")
    rec = read_recording(path, fs=24000.0, rpm=1500.0, geometry=fan_end)
    assert (rec.fs, rec.rpm, rec.geometry, rec.meta["fs_source"]) == (
        24000.0,
        1500.0,
        fan_end,
        "argument",
    )


# --- errors ----------------------------------------------------------------------------------


def test_error_messages_name_file_and_problem(rec105: Recording, tmp_path: Path) -> None:
    txt = tmp_path / "rec.txt"
    txt.write_text("1\n2\n")
    with pytest.raises(RecordingError) as err:
        read_recording(txt)
    assert str(err.value) == (
        f"{txt}: unsupported file type '.txt'; expected one of .mat, .npz, .wav, .csv"
    )

    bad = rec105.signal[:4000].astype(np.float64)
    bad[1234] = np.nan
    bad[2000] = np.inf
    npz = tmp_path / "nan.npz"
    np.savez(npz, signal=bad, fs=12000.0)
    with pytest.raises(RecordingError) as err:
        read_recording(npz)
    assert str(err.value) == f"{npz}: non-finite value nan at index 1234 (2 non-finite in total)"

    csv = tmp_path / "nan.csv"
    csv.write_text("signal\n" + "\n".join(["0.5"] * 100 + ["nan"] + ["0.1"] * 10) + "\n")
    with pytest.raises(RecordingError, match=r"non-finite value nan at index 100 "):
        read_recording(csv, fs=1000)
    csv.write_text("signal\n" + "\n".join(["0.5"] * 100 + ["0.1x"]) + "\n")
    with pytest.raises(RecordingError, match=r"line 102, column 'signal': not a number: '0.1x'"):
        read_recording(csv, fs=1000)

    np.savez(npz, signal=rec105.signal[:4000])
    with pytest.raises(RecordingError) as err:
        read_recording(npz)
    assert str(err.value) == f"{npz}: missing key 'fs' (keys present: signal)"

    np.savez(npz, signal=rec105.signal[:10], fs=12000.0)
    with pytest.raises(RecordingError, match="too short: 10 samples, need at least 64"):
        read_recording(npz)

    with pytest.raises(RecordingError, match="file not found"):
        read_recording(tmp_path / "absent.wav")


# --- windows ---------------------------------------------------------------------------------


def test_iter_windows_counts_and_offsets(rec105: Recording) -> None:
    windows = list(iter_windows(rec105, "pump-1", window_s=1.0, hop_s=0.5, ts0=1000.0))
    assert len(windows) == (121265 - 12000) // 6000 + 1 == 19
    for k, w in enumerate(windows):
        assert w.meta == {"source": rec105.source, "offset_s": 0.5 * k}
        assert w.ts == 1000.0 + 0.5 * k
        assert (w.asset, w.fs, w.rpm, len(w.samples)) == ("pump-1", 12000.0, 1797.0, 12000)
    np.testing.assert_array_equal(windows[3].samples, rec105.signal[18000:30000])

    windows[0].samples[:] = 0  # a window is a copy: the recording must not change
    assert np.any(rec105.signal[:12000] != 0)

    part = list(iter_windows(rec105, "a", start_s=2.0, stop_s=5.0))
    assert [w.meta["offset_s"] for w in part] == [2.0, 3.0, 4.0]

    assert list(iter_windows(rec105, "a", window_s=11.0)) == []  # 10.1 s < one window
    assert list(iter_windows(rec105, "a", start_s=9.5)) == []
    assert len(list(iter_windows(rec105, "a", start_s=9.1))) == 1
    with pytest.raises(ValueError, match="at least one sample"):
        iter_windows(rec105, "a", hop_s=0.0)  # raised at call time, not on first next()
    with pytest.raises(ValueError, match="start_s must be >= 0"):
        iter_windows(rec105, "a", start_s=-1.0)


# --- manifests -------------------------------------------------------------------------------


def test_read_manifest_cwru(cwru_dir: Path) -> None:
    entries = read_manifest(cwru_dir)
    assert len(entries) == 40
    assert Counter(e.label for e in entries) == {
        "normal": 1,
        "inner_race": 13,
        "ball": 13,
        "outer_race": 13,
    }
    assert all(e.path.is_absolute() and e.path.is_file() for e in entries)
    by_id = {e.record_id: e for e in entries}
    e105 = by_id["105"]
    assert (e105.label, e105.fault_size_in, e105.load_hp, e105.rpm, e105.fs, e105.bearing) == (
        "inner_race",
        0.007,
        0,
        1797.0,
        12000.0,
        "6205",
    )
    assert by_id["130"].meta["or_position"] == "6:00"
    assert verify_sha256(e105)


def test_read_manifest_names_row_and_column(cwru_dir: Path, tmp_path: Path) -> None:
    header, first, second, *_ = (cwru_dir / "manifest.csv").read_text().splitlines()
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join([header, first, second.replace(",12000,", ",12k,")]) + "\n")
    with pytest.raises(RecordingError) as err:
        read_manifest(tmp_path)
    assert str(err.value) == f"{manifest}: row 2, column 'fs_hz': not a number: '12k'"

    manifest.write_text("\n".join([header, first.replace("normal", "broken", 2)]) + "\n")
    with pytest.raises(RecordingError, match=r"row 1, column 'fault': unknown fault label"):
        read_manifest(tmp_path)

    manifest.write_text(header.replace("fs_hz", "rate") + "\n")
    with pytest.raises(RecordingError, match=r"missing column\(s\) fs_hz"):
        read_manifest(tmp_path)


def test_verify_sha256_detects_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    path.write_bytes(b"abc")
    good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    entry = ManifestEntry(path, "x", "normal", 0.0, 0, None, 12000.0, good)
    assert verify_sha256(entry)
    path.write_bytes(b"abd")
    assert not verify_sha256(entry)


# --- demo set --------------------------------------------------------------------------------


def test_demo_set_is_complete_small_and_intact() -> None:
    total = sum(p.stat().st_size for p in DEMO_DIR.iterdir() if p.is_file())
    assert total < HARD_LIMIT_BYTES
    entries = read_manifest(DEMO_DIR)
    assert len(entries) == 40
    assert Counter(e.label for e in entries)["normal"] == 1
    for e in entries:
        assert e.path.parent == DEMO_DIR
        assert verify_sha256(e), e.path
    rec = read_recording(DEMO_DIR / "97.npz")
    assert (rec.fs, rec.rpm, rec.meta["label"], len(rec.signal)) == (
        48000.0,
        1796.0,
        "normal",
        243938,
    )
    assert rec.geometry == bearing_preset("6205")


def test_demo_signal_matches_source_within_float16(cwru_dir: Path) -> None:
    # record 234 has the largest amplitude (|x| up to 6.65), so the coarsest float16 steps
    source = np.asarray(loadmat(str(cwru_dir / "12k_drive_end/234.mat"))["X234_DE_time"]).ravel()
    demo_rec = read_recording(DEMO_DIR / "234.npz")
    assert len(demo_rec.signal) == 72000
    expected = source[:72000]
    error = np.abs(demo_rec.signal.astype(np.float64) - expected)
    bound = np.maximum(np.abs(expected) * 2.0**-11, 2.0**-25)
    assert np.all(error <= bound)
    assert float(np.max(error)) > 0  # it really is float16, not a lossless copy


def test_derive_is_byte_reproducible(cwru_dir: Path, tmp_path: Path) -> None:
    entry = next(e for e in read_manifest(cwru_dir) if e.record_id == "105")
    first = derive_record(entry, tmp_path, 6.0)
    data = first.file.read_bytes()
    second = derive_record(entry, tmp_path, 6.0)
    assert second.file.read_bytes() == data
    assert data == (DEMO_DIR / "105.npz").read_bytes()  # the committed file is current
    assert first.n_samples == 72000
    assert first.rel_rms_error < 5e-4
