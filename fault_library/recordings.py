"""Recorded vibration files in, checked float32 signals and windows out.

``diagnose``, ``simulate``, the library builder and the demo all start from a file on
disk. Reading every format here, with one set of checks and one error type whose
message names the file and the problem, means a user with a bad file hears what is
wrong with it instead of a numpy traceback from deep in the pipeline.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from faultline.encoders.geometry import BearingGeometry, bearing_preset
from faultline.encoders.signals import Window
from faultline.fault_library.catalog import RecordingError, read_manifest

__all__ = [
    "MIN_SAMPLES",
    "Recording",
    "RecordingError",
    "iter_windows",
    "read_mat_channel",
    "read_recording",
]

MIN_SAMPLES = 64
"""Fewer samples than this cannot give even one meaningful spectrum."""

SUPPORTED_SUFFIXES = (".mat", ".npz", ".wav", ".csv")
_GEOMETRY_KEYS = ("n_balls", "ball_diameter", "pitch_diameter")
_F32_MAX = float(np.finfo(np.float32).max)

Float64Array = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Recording:
    """One channel of a recording, with what the file (or the user) says about it."""

    signal: Float32Array
    fs: float
    rpm: float | None
    geometry: BearingGeometry | None
    source: str
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return len(self.signal) / self.fs


@dataclass(frozen=True)
class _Raw:
    """What a format reader found, before overrides and checks."""

    signal: npt.NDArray[np.generic]
    fs: float | None
    rpm: float | None = None
    geometry: BearingGeometry | None = None
    meta: dict[str, object] = field(default_factory=dict)


def read_recording(
    path: str | Path,
    *,
    fs: float | None = None,
    rpm: float | None = None,
    geometry: BearingGeometry | None = None,
    channel: str = "DE",
) -> Recording:
    """Read one channel of ``path``; explicit ``fs``/``rpm``/``geometry`` beat the file.

    ``channel`` names the CWRU channel (``DE``/``FE``/``BA``) or CSV column; for a
    multi-channel WAV a digit string selects the channel index (else the first is used).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise RecordingError(
            f"{path}: unsupported file type {suffix or '(none)'!r}; "
            f"expected one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    if not path.is_file():
        raise RecordingError(f"{path}: file not found")
    if suffix == ".mat":
        raw = _read_mat(path, channel, need_fs=fs is None)
    elif suffix == ".npz":
        raw = _read_npz(path)
    elif suffix == ".wav":
        raw = _read_wav(path, channel)
    else:
        raw = _read_csv(path, channel)

    meta = dict(raw.meta)
    if fs is not None:
        meta["fs_source"] = "argument"
    elif raw.fs is not None:
        meta.setdefault("fs_source", "file")
    fs_final = fs if fs is not None else raw.fs
    if fs_final is None:
        raise RecordingError(f"{path}: sampling rate unknown; pass it with --fs (fs=...)")
    if not (math.isfinite(fs_final) and fs_final > 0):
        raise RecordingError(f"{path}: sampling rate must be a positive number, got {fs_final}")
    rpm_final = rpm if rpm is not None else raw.rpm
    if rpm_final is not None and not (math.isfinite(rpm_final) and rpm_final > 0):
        raise RecordingError(f"{path}: rpm must be a positive number, got {rpm_final}")
    signal = _checked_signal(path, raw.signal)
    return Recording(
        signal=signal,
        fs=float(fs_final),
        rpm=None if rpm_final is None else float(rpm_final),
        geometry=geometry if geometry is not None else raw.geometry,
        source=str(path),
        meta=meta,
    )


def _checked_signal(path: Path, values: npt.NDArray[np.generic]) -> Float32Array:
    """Reject what would poison a spectrum, on the file's own dtype, then cast."""
    arr = np.asarray(values)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.ravel()
    if arr.ndim != 1:
        raise RecordingError(f"{path}: signal must be 1-D, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise RecordingError(f"{path}: signal must be real numbers, got dtype {arr.dtype}")
    if arr.size < MIN_SAMPLES:
        raise RecordingError(f"{path}: too short: {arr.size} samples, need at least {MIN_SAMPLES}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise RecordingError(
                f"{path}: non-finite value {arr[bad[0]]} at index {bad[0]} "
                f"({bad.size} non-finite in total)"
            )
        if arr.dtype.itemsize > 4:  # only wider floats can overflow float32
            big = np.flatnonzero(np.abs(arr) > _F32_MAX)
            if big.size:
                raise RecordingError(
                    f"{path}: value {arr[big[0]]} at index {big[0]} overflows float32"
                )
    return arr.astype(np.float32)


def _scalar(path: Path, name: str, value: object) -> float:
    try:
        return float(np.asarray(value).item())
    except (TypeError, ValueError) as exc:
        raise RecordingError(f"{path}: {name} must be a single number, got {value!r}") from exc


# --- CWRU .mat ------------------------------------------------------------------------


def read_mat_channel(path: Path, channel: str = "DE") -> tuple[Float64Array, float | None, str]:
    """The raw float64 channel of a CWRU file, its RPM and the key it came from.

    Variables are chosen by the record number in the file name (``X105_DE_time`` for
    ``105.mat``) because some originals carry a second record's arrays (99.mat holds a
    copy of 98's); the lone ``*_<channel>_time`` key is used only when it is unambiguous.
    Exposed for tools (the demo deriver) that need the source precision.
    """
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises several unrelated types for a bad file
        raise RecordingError(f"{path}: not a readable MATLAB file ({exc})") from exc
    suffix = f"_{channel.upper()}_time"
    keys = sorted(k for k in mat if not k.startswith("__"))
    number = re.search(r"(\d+)$", path.stem)
    wanted = f"X{int(number.group(1)):03d}{suffix}" if number else None
    if wanted is not None and wanted in mat:
        key = wanted
    elif channel in mat:  # another rig's layout, the variable named (e.g. UESTC's "Data")
        key = channel
    else:
        candidates = [k for k in keys if k.endswith(suffix)]
        if len(candidates) != 1:
            expected = f"{wanted!r} or exactly one " if wanted else "exactly one "
            raise RecordingError(
                f"{path}: expected {expected}key ending in {suffix!r}; keys present: "
                f"{', '.join(keys) or '(none)'}"
            )
        key = candidates[0]
    rpm_key = key[: -len(suffix)] + "RPM"
    rpm = _scalar(path, rpm_key, mat[rpm_key]) if rpm_key in mat else None
    signal = np.asarray(mat[key], dtype=np.float64).ravel()
    return signal, rpm, key


_MAT_RATE_KEYS = ("SampleFrequency", "fs", "Fs", "sample_rate")
"""Variables that carry the sampling rate in .mat layouts other than CWRU's."""


def _read_mat(path: Path, channel: str, *, need_fs: bool) -> _Raw:
    signal, rpm, key = read_mat_channel(path, channel)
    meta: dict[str, object] = {"format": "mat", "key": key}
    fs: float | None = None
    if need_fs:
        fs, fs_source = _mat_fs(path)
        meta["fs_source"] = fs_source
    return _Raw(signal=signal, fs=fs, rpm=rpm, meta=meta)


def _mat_fs(path: Path) -> tuple[float, str]:
    """A .mat file does not store its rate: ask a nearby manifest, then the folder name."""
    target = path.resolve()
    for folder in (target.parent, target.parent.parent):
        if (folder / "manifest.csv").is_file():
            for entry in read_manifest(folder):
                if entry.path == target:
                    return entry.fs, "manifest"
    from scipy.io import loadmat, whosmat

    try:
        stored = {name for name, _, _ in whosmat(str(path))} & set(_MAT_RATE_KEYS)
    except Exception:  # unreadable: read_mat_channel has already said so
        stored = set()
    if stored:
        key = sorted(stored)[0]
        return _scalar(path, key, loadmat(str(path), variable_names=[key])[key]), "file"
    folder_rate = re.match(r"(\d+)k(?:_|$)", target.parent.name, re.IGNORECASE)
    if folder_rate:
        return float(folder_rate.group(1)) * 1000.0, "folder name"
    raise RecordingError(
        f"{path}: sampling rate unknown: a .mat file does not store it, no manifest.csv "
        "lists it and the folder name is not like '12k_...'; pass it with --fs (fs=...)"
    )


# --- .npz / .wav / .csv -----------------------------------------------------------------


def _read_npz(path: Path) -> _Raw:
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except Exception as exc:  # zipfile/pickle/format errors: all mean "not a usable npz"
        raise RecordingError(f"{path}: not a readable .npz file ({exc})") from exc
    for required in ("signal", "fs"):
        if required not in data:
            raise RecordingError(
                f"{path}: missing key {required!r} (keys present: {', '.join(sorted(data))})"
            )
    fs = _scalar(path, "fs", data["fs"])
    rpm = _scalar(path, "rpm", data["rpm"]) if "rpm" in data else None
    present = [k for k in _GEOMETRY_KEYS if k in data]
    bearing = str(data["bearing"].item()) if "bearing" in data else None
    geometry: BearingGeometry | None = None
    try:
        preset = bearing_preset(bearing) if bearing is not None else None
        if len(present) == len(_GEOMETRY_KEYS):
            angle = _scalar(path, "contact_angle_deg", data.get("contact_angle_deg", 0.0))
            geometry = BearingGeometry(
                n_balls=int(_scalar(path, "n_balls", data["n_balls"])),
                ball_diameter=_scalar(path, "ball_diameter", data["ball_diameter"]),
                pitch_diameter=_scalar(path, "pitch_diameter", data["pitch_diameter"]),
                contact_angle_deg=angle,
                name=preset.name if preset is not None else "custom",
            )
        elif present:
            missing = [k for k in _GEOMETRY_KEYS if k not in data]
            raise RecordingError(
                f"{path}: incomplete bearing geometry: has {', '.join(present)} "
                f"but not {', '.join(missing)}"
            )
        else:
            geometry = preset
    except RecordingError:
        raise
    except ValueError as exc:
        raise RecordingError(f"{path}: bad bearing geometry: {exc}") from exc
    meta: dict[str, object] = {"format": "npz"}
    skip = {"signal", "fs", "rpm", "bearing", "contact_angle_deg", *_GEOMETRY_KEYS}
    for key, value in data.items():
        if key not in skip and value.ndim == 0:
            meta[key] = value.item()
    return _Raw(signal=data["signal"], fs=fs, rpm=rpm, geometry=geometry, meta=meta)


def _read_wav(path: Path, channel: str) -> _Raw:
    from scipy.io import wavfile

    try:
        rate, data = wavfile.read(str(path))
    except Exception as exc:  # scipy raises ValueError or struct errors for bad headers
        raise RecordingError(f"{path}: not a readable WAV file ({exc})") from exc
    data = np.asarray(data)
    meta: dict[str, object] = {"format": "wav", "wav_dtype": str(data.dtype)}
    if data.ndim == 2:
        index = int(channel) if channel.isdigit() else 0
        if index >= data.shape[1]:
            raise RecordingError(
                f"{path}: channel {index} requested but the file has {data.shape[1]} channels"
            )
        data = data[:, index]
        meta["channel"] = index
    if data.dtype == np.uint8:  # 8-bit WAV is unsigned, centred on 128
        signal = (data.astype(np.float64) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        signal = data.astype(np.float64) / float(2 ** (8 * data.dtype.itemsize - 1))
    else:
        signal = data
    return _Raw(signal=signal, fs=float(rate), meta=meta)


def _read_csv(path: Path, channel: str) -> _Raw:
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and any(c.strip() for c in row)]
    if not rows:
        raise RecordingError(f"{path}: empty CSV file")
    header: list[str] | None = None
    if not _is_number(rows[0][0]):
        header = [c.strip() for c in rows[0]]
        rows = rows[1:]
    names = [h.lower() for h in header] if header is not None else []
    if header is None:
        if len(rows[0]) != 1:
            raise RecordingError(
                f"{path}: {len(rows[0])} columns but no header; give one column of samples "
                f"or a header naming the signal column ({channel!r}, 'signal' or 'value')"
            )
        column = 0
    else:
        wanted = (channel.lower(), f"{channel.lower()}_time", "signal", "value")
        matches = [names.index(w) for w in wanted if w in names]
        others = [i for i, n in enumerate(names) if n != "time"]
        if matches:
            column = matches[0]
        elif len(others) == 1:
            column = others[0]
        else:
            raise RecordingError(
                f"{path}: no signal column; expected one named {channel!r}, 'signal' or "
                f"'value', columns present: {', '.join(header)}"
            )
    signal = _csv_column(path, rows, column, header)
    fs: float | None = None
    meta: dict[str, object] = {"format": "csv"}
    if header is not None and "time" in names:
        fs = _fs_from_time(path, _csv_column(path, rows, names.index("time"), header))
        meta["fs_source"] = "time column"
    return _Raw(signal=signal, fs=fs, meta=meta)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_column(
    path: Path, rows: list[list[str]], column: int, header: list[str] | None
) -> Float64Array:
    first_line = 2 if header is not None else 1
    name = header[column] if header is not None else str(column)
    out = np.empty(len(rows), dtype=np.float64)
    for i, row in enumerate(rows):
        try:
            out[i] = float(row[column])
        except (IndexError, ValueError):
            cell = row[column] if column < len(row) else "(missing)"
            raise RecordingError(
                f"{path}: line {first_line + i}, column {name!r}: not a number: {cell!r}"
            ) from None
    return out


def _fs_from_time(path: Path, time: Float64Array) -> float:
    """Derive fs from a time column, refusing one that is not evenly spaced."""
    if time.size < 2 or not np.all(np.isfinite(time)):
        raise RecordingError(f"{path}: time column must hold at least 2 finite values")
    steps = np.diff(time)
    step = float(np.median(steps))
    if step <= 0 or float(np.max(np.abs(steps - step))) > 0.01 * step:
        raise RecordingError(f"{path}: time column is not evenly increasing; pass --fs")
    return 1.0 / step


# --- windows ------------------------------------------------------------------------------


def iter_windows(
    rec: Recording,
    asset: str,
    *,
    window_s: float = 1.0,
    hop_s: float | None = None,
    start_s: float = 0.0,
    stop_s: float | None = None,
    ts0: float = 0.0,
) -> Iterator[Window]:
    """Cut ``rec`` into windows as a sensor would send them.

    Only whole windows are produced: a tail shorter than ``window_s`` is dropped, and a
    span shorter than one window yields nothing (callers report that in their own terms).
    Bad arguments raise ``ValueError`` at call time, not on the first ``next()``.
    """
    n = round(window_s * rec.fs)
    hop = round((window_s if hop_s is None else hop_s) * rec.fs)
    start = round(start_s * rec.fs)
    stop = len(rec.signal) if stop_s is None else min(len(rec.signal), round(stop_s * rec.fs))
    if n < 1 or hop < 1:
        raise ValueError(f"window_s and hop_s must cover at least one sample at {rec.fs} Hz")
    if start < 0:
        raise ValueError(f"start_s must be >= 0, got {start_s}")
    return _windows(rec, asset, range(start, stop - n + 1, hop), n, ts0)


def _windows(rec: Recording, asset: str, starts: range, n: int, ts0: float) -> Iterator[Window]:
    for i in starts:
        offset = i / rec.fs
        yield Window(
            asset=asset,
            ts=ts0 + offset,
            fs=rec.fs,
            samples=rec.signal[i : i + n].copy(),
            rpm=rec.rpm,
            geometry=rec.geometry,
            meta={"source": rec.source, "offset_s": offset},
        )
