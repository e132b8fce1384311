"""Physics-aware spectrum encoder: measurements in, L2-normalised vectors out.

Two views, one per thing a sensor can send. A ``SpectrumFrame`` has no phase, so it gets
what a magnitude spectrum allows: the raw band profile, raw lines at the characteristic
orders, and the spectrum's autocorrelation read at those orders as an envelope stand-in
(:func:`faultline.encoders.features.comb_correlation`). A raw ``Window`` gets all of that
from its own spectrum plus time statistics and the Hilbert envelope on the order axis.
Vectors of the two views are not comparable; the library keeps one index per view.

Window view (98), everything on quantities that mean the same on every machine: time
statistics 3 (kurtosis, crest, skewness: relative to Gaussian noise) + impulsiveness 1 (the
spectral kurtosis of the demodulation band) + envelope lines 23 + envelope order profile 48
(the squared-envelope spectrum of the band the signal itself selects,
:mod:`faultline.encoders.demodulation`, on the shaft-order axis) + raw lines 23 (dB above
the local floor at the characteristic orders). No absolute level in g, no resonance
position, no raw spectral shape: those describe the rig, not the fault, and are why a
library built on one rig found nothing on another. The window view works at the window's
native sample rate: the band is chosen and demodulated before anything is decimated.
Spectrum view (122): raw band profile 28 + raw lines 23 + comb lines 23 + comb profile 48.

``encode`` runs the trained projection (``models/spectrum-<view>.onnx``, one onnxruntime
call per batch; :mod:`faultline.encoders.projection`) on the unweighted ``features``: 256-d
unit vectors. ``projection=None`` keeps the hand-weighted v1 encoding
``normalise(weights * features)`` (dimension F) for ablations; the v1 weights are also where
training starts. Speed (rpm) comes from the measurement (the runtime fills it from the
asset's config) or is estimated from the spectrum (:mod:`faultline.encoders.speed`);
``describe_rpm`` says which.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict
from functools import lru_cache
from typing import Literal

import numpy as np
import numpy.typing as npt

from faultline.encoders import features as ft
from faultline.encoders.blocks import WindowBlock, window_blocks
from faultline.encoders.demodulation import select_bands, squared_envelope_spectra
from faultline.encoders.geometry import BearingGeometry, bearing_preset
from faultline.encoders.projection import ProjectionError, ProjectionSet
from faultline.encoders.signals import Measurement, SpectrumFrame, Window, shape_groups
from faultline.encoders.speed import estimate_rpm, estimate_shaft_hz

__all__ = ["MODEL_FAMILY", "ProjectionArg", "SpectrumEncoder", "View", "default_projection"]

View = Literal["window", "spectrum"]
ProjectionArg = ProjectionSet | Literal["default"] | None
F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]

MODEL_FAMILY = "faultline-order-envelope-v2"
MIN_SAMPLES = 256
MIN_DURATION_S = 0.25
"""Shorter windows cannot resolve the shaft orders the features need (4 Hz bins)."""
_RPM_CACHE_SIZE = 256


def _fingerprint(item: Measurement) -> tuple[object, ...]:
    """What tells two measurements apart, without their samples."""
    size = len(item.samples) if isinstance(item, Window) else int(item.n_fft)
    return (item.asset, item.ts, item.fs, item.rpm, item.rpm_tolerance, size)


_BPFI_COLUMN = ft.characteristic_orders(bearing_preset("6205"))[0].index("bpfi_1")
"""Where BPFI (1x) sits among the characteristic orders: the same for every geometry."""

# Typical spread (RMS about the mean, per element) of each block over CWRU windows of all
# classes. Dividing by it puts blocks on one scale, so the weights in FeatureParams alone
# say how much each counts. Design constants, not a fitted model: they are not refitted
# per library, and they are part of the model id.
_BLOCK_SCALE: dict[str, float] = {
    "time": 0.22,
    "impulse": 0.49,
    "env_lines": 0.73,
    "env_orders": 0.36,
    "raw_profile": 0.46,
    "raw_lines": 0.54,
    "comb_lines": 0.22,
    "comb_orders": 0.022,
}


@lru_cache(maxsize=64)
def _line_orders(geometry: BearingGeometry) -> F64:
    """Shaft orders of ``geometry``'s characteristic lines (read-only, cached: every batch
    asks for them, and most assets share a handful of bearings)."""
    orders = ft.characteristic_orders(geometry)[1]
    orders.flags.writeable = False
    return orders


@lru_cache(maxsize=4)
def default_projection(threads: int = 1) -> ProjectionSet:
    """The shipped ONNX projections (sha256-verified once per process and thread count).

    Sessions are shared by every encoder that asks: onnxruntime's ``run`` is thread-safe,
    and each graph is loaded only once.
    """
    return ProjectionSet.load(threads=threads)


class SpectrumEncoder:
    """Feature encoder shared by the runtime and the library builder (thread-safe).

    ``projection``: ``"default"`` runs the shipped models (their manifest must name this
    encoder's features, or a :class:`ProjectionError` says so), a :class:`ProjectionSet`
    runs that one (e.g. trained inside an evaluation fold), ``None`` gives the v1
    weighted features. ``threads``: onnxruntime intra-op threads of the default sessions.
    """

    def __init__(
        self,
        target_fs: float = 12000.0,
        window_s: float = 1.0,
        default_geometry: BearingGeometry | None = None,
        params: ft.FeatureParams | None = None,
        projection: ProjectionArg = "default",
        threads: int = 1,
    ) -> None:
        if not (math.isfinite(target_fs) and target_fs > 0):
            raise ValueError(f"target_fs must be positive, got {target_fs}")
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.target_fs = float(target_fs)
        self.window_s = float(window_s)
        self.default_geometry = default_geometry or bearing_preset("6205")
        self.params = params or ft.FeatureParams()
        scales = ",".join(f"{k}={v:g}" for k, v in sorted(_BLOCK_SCALE.items()))
        ident = f"{self.params.digest()}|{self.target_fs:g}|{self.window_s:g}|{scales}"
        self.feature_id = f"{MODEL_FAMILY}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}"
        """Names the features alone (the v1 encoding); a projection must be trained on it."""
        if projection == "default":
            projection = default_projection(threads)
        if projection is not None and projection.feature_id not in (None, self.feature_id):
            raise ProjectionError(
                f"the spectrum projection was trained on features {projection.feature_id}, "
                f"but this encoder computes {self.feature_id} (other feature parameters, "
                "target_fs or window_s): retrain it (models/train_spectrum.py) or pass "
                "projection=None for the untrained v1 encoding"
            )
        self.projection: ProjectionSet | None = projection
        self.model_sha256: str | None = None if projection is None else projection.sha256
        """Digest of the projection models (None for v1); stored in library manifests."""
        # The model id names everything that changes a vector, so a library built with
        # another model or other settings is refused instead of silently compared.
        self.model_id = (
            self.feature_id
            if self.model_sha256 is None
            else f"{self.feature_id}-proj-{self.model_sha256[:12]}"
        )
        self._threads = threads
        self._geometry_arg = default_geometry
        self._layout = {view: self._block_layout(view) for view in ("window", "spectrum")}
        self._n_features: dict[View, int] = {
            view: len(self.feature_names(view)) for view in ("window", "spectrum")
        }
        self._weights = {view: self._block_weights(view) for view in ("window", "spectrum")}
        for view in ("window", "spectrum"):
            if projection is not None and projection.n_features(view) != self.n_features(view):
                raise ProjectionError(
                    f"the {view} projection takes {projection.n_features(view)} features, "
                    f"this encoder computes {self.n_features(view)}"
                )
        self._rpm_cache: OrderedDict[int, tuple[tuple[object, ...], float]] = OrderedDict()
        self._lock = threading.Lock()

    # --- layout -------------------------------------------------------------------------

    def _block_layout(self, view: View) -> list[tuple[str, tuple[str, ...]]]:
        line_names, _ = ft.characteristic_orders(self.default_geometry)
        order_names = ft.order_profile_names(self.params)
        profile_names = tuple(f"band{i:02d}" for i in range(self.params.profile_bands))
        if view == "window":
            return [
                ("time", ft.TIME_STAT_NAMES[:3]),
                ("impulse", (ft.BAND_KURTOSIS_NAME,)),
                ("env_lines", tuple(ft.line_name(ft.ENVELOPE, n) for n in line_names)),
                ("env_orders", tuple(ft.line_name(ft.ENVELOPE, n) for n in order_names)),
                ("raw_lines", tuple(ft.line_name(ft.RAW, n) for n in line_names)),
            ]
        return [
            ("raw_profile", tuple(ft.line_name(ft.RAW, n) for n in profile_names)),
            ("raw_lines", tuple(ft.line_name(ft.RAW, n) for n in line_names)),
            ("comb_lines", tuple(ft.line_name(ft.COMB, n) for n in line_names)),
            ("comb_orders", tuple(ft.line_name(ft.COMB, n) for n in order_names)),
        ]

    def feature_names(self, view: View) -> tuple[str, ...]:
        return tuple(name for _, names in self._layout[view] for name in names)

    def dim(self, view: View) -> int:
        """Length of ``encode``'s vectors (the projection's output, else the feature count)."""
        if self.projection is not None:
            return self.projection.dim(view)
        return self.n_features(view)

    def n_features(self, view: View) -> int:
        return self._n_features[view]

    def with_projection(self, projection: ProjectionSet | None) -> SpectrumEncoder:
        """The same features encoded through ``projection`` (or v1 when None)."""
        return SpectrumEncoder(
            self.target_fs,
            self.window_s,
            self._geometry_arg,
            self.params,
            projection=projection,
            threads=self._threads,
        )

    def weights(self, view: View) -> F64:
        """Per-feature multipliers: block weight / (typical scale * sqrt(block size))."""
        return self._weights[view].copy()

    def _block_weights(self, view: View) -> F64:
        values = asdict(self.params)
        parts = []
        for block, names in self._layout[view]:
            w = float(values[f"w_{block}"])
            parts.append(np.full(len(names), w / (_BLOCK_SCALE[block] * math.sqrt(len(names)))))
        return np.concatenate(parts)

    def view_of(self, item: Measurement) -> View:
        if isinstance(item, Window):
            return "window"
        if isinstance(item, SpectrumFrame):
            return "spectrum"
        raise TypeError(f"expected Window or SpectrumFrame, got {type(item).__name__}")

    # --- public steps -------------------------------------------------------------------

    def encode(self, items: Sequence[Measurement]) -> F32:
        """(n, dim(view)) float32, rows L2-normalised; all items must share one view."""
        view, feats = self._features(items)
        return self.encode_features(view, feats)

    def encode_with_features(
        self, items: Sequence[Measurement], *, blocks: Sequence[WindowBlock] | None = None
    ) -> tuple[F64, F32]:
        """Unweighted features and vectors in one pass: the runtime reads the
        characteristic lines from the features (:mod:`faultline.fault_library.physics`).

        ``blocks``: ``items``' raw windows already stacked and transformed
        (:func:`~faultline.encoders.blocks.window_blocks` of ``items``), when the caller
        shares them with the quality gate and the velocity; else they are built here.
        """
        view, feats = self._features(items, blocks)
        return feats, self.encode_features(view, feats)

    def encode_features(self, view: View, feats: npt.ArrayLike) -> F32:
        """``encode`` from precomputed ``features`` (one projection call for the batch)."""
        feats = np.asarray(feats)
        if self.projection is not None:
            return self.projection(view, feats.astype(np.float32))
        weighted = feats * self._weights[view]
        norms = np.linalg.norm(weighted, axis=1, keepdims=True)
        out: F32 = (weighted / np.maximum(norms, 1e-12)).astype(np.float32)
        return out

    def features(self, items: Sequence[Measurement]) -> F32:
        """Unweighted feature vectors (n, dim(view)); the input of a trained projection."""
        return self._features(items)[1].astype(np.float32)

    def describe_rpm(self, item: Measurement) -> tuple[float, str]:
        """Speed used for ``item`` and where it came from: ``message`` (exact, as sent or
        filled from the asset's config), ``refined`` (nominal, sharpened from the spectrum
        within ``rpm_tolerance``) or ``estimated`` (none given).

        An estimate made by ``encode`` is reused, not redone.
        """
        if item.rpm is not None and item.rpm_tolerance <= 0:
            return float(item.rpm), "message"
        source = "estimated" if item.rpm is None else "refined"
        with self._lock:
            hit = self._rpm_cache.get(id(item))
        if hit is not None and hit[0] == _fingerprint(item):
            return hit[1], source
        if isinstance(item, Window):
            (block,) = window_blocks([item], max_s=self.window_s)
            self._check_block(block)
            mag = block.amplitude
            df = float(item.fs) / block.n
        else:
            mag = np.asarray(item.magnitude, dtype=np.float64)[None, :]
            df = item.fs / item.n_fft
        rpm = float(self._rpms([item], mag, df)[0])
        return rpm, source

    # --- internals ----------------------------------------------------------------------

    def _features(
        self, items: Sequence[Measurement], blocks: Sequence[WindowBlock] | None = None
    ) -> tuple[View, F64]:
        if not items:
            raise ValueError("encode needs at least one measurement")
        view = self.view_of(items[0])
        if any(self.view_of(item) != view for item in items):
            raise ValueError("all measurements in one encode call must share one view")
        out = np.empty((len(items), self.n_features(view)))
        if view == "window":
            for block in self._window_blocks(items, blocks):
                out[list(block.positions)] = self._window_group(block)
        else:
            for idx in shape_groups(items).values():
                frames = [f for f in (items[i] for i in idx) if isinstance(f, SpectrumFrame)]
                out[idx] = self._spectrum_group(frames)
        if not np.all(np.isfinite(out)):
            raise ValueError("non-finite features; check the measurement values")
        return view, out

    def _window_blocks(
        self, items: Sequence[Measurement], blocks: Sequence[WindowBlock] | None
    ) -> list[WindowBlock]:
        """``items``' windows stacked by shape and cut to ``window_s``, at their native
        sample rate: the caller's ``blocks`` when given (checked to be ``items``'), else
        built here."""
        if blocks is None:
            return window_blocks(items, max_s=self.window_s)
        placed = [
            (i, w) for block in blocks for i, w in zip(block.positions, block.windows, strict=True)
        ]
        if sorted(i for i, _ in placed) != list(range(len(items))) or any(
            items[i] is not w for i, w in placed
        ):
            raise ValueError("blocks must be window_blocks(items) of the items encoded")
        return [block.cut(self.window_s) for block in blocks]

    @staticmethod
    def _check_block(block: WindowBlock) -> None:
        """Finite samples, and enough of them to resolve the shaft orders."""
        # The rfft's 0 Hz bin is each row's sum: finite exactly when no sample is NaN or
        # infinite (unless the sum overflows, which the full check then settles).
        if not np.isfinite(block.spectrum[:, 0]).all() and not np.isfinite(block.samples).all():
            raise ValueError("window samples must be finite")
        if block.n < MIN_SAMPLES or block.n / block.fs < MIN_DURATION_S:
            raise ValueError(
                f"window too short: {block.n} samples at {block.fs:g} Hz, need at least "
                f"{MIN_SAMPLES} samples and {MIN_DURATION_S:g} s"
            )

    def _rpms(self, items: Sequence[Measurement], mag: F64, df: float) -> F64:
        """Each item's speed: given, refined within its tolerance, or estimated."""
        rpm = np.array([np.nan if it.rpm is None else float(it.rpm) for it in items])
        missing = np.isnan(rpm)
        if missing.any():
            rpm[missing] = estimate_rpm(mag[missing], df)
        ranges: dict[tuple[float, float], list[int]] = {}
        for i, it in enumerate(items):
            if it.rpm is not None and it.rpm_tolerance > 0:
                tol = min(float(it.rpm_tolerance), 0.5)
                ranges.setdefault(
                    (it.rpm * (1 - tol) / 60.0, it.rpm * (1 + tol) / 60.0), []
                ).append(i)
        for band, rows in ranges.items():
            rpm[rows] = 60.0 * estimate_shaft_hz(mag[rows], df, shaft_range_hz=band)
        guessed = [i for i, it in enumerate(items) if it.rpm is None or it.rpm_tolerance > 0]
        if guessed:
            self._remember([items[i] for i in guessed], rpm[guessed])
        if not np.all(np.isfinite(rpm)) or np.any(rpm <= 0):
            raise ValueError("rpm must be a positive finite number")
        return rpm

    def _remember(self, items: Sequence[Measurement], rpms: F64) -> None:
        """Keep the last estimates (bounded) so ``describe_rpm`` after ``encode`` is free.

        Keyed by object identity and checked against the measurement's fingerprint (asset,
        time, rate, speed, length), so a recycled id cannot return another measurement's
        speed. The items themselves are not kept: 256 windows of 480,000 samples held
        here once took the agent from 174 to 747 MB (issue 14).
        """
        with self._lock:
            for item, rpm in zip(items, rpms, strict=True):
                self._rpm_cache[id(item)] = (_fingerprint(item), float(rpm))
            while len(self._rpm_cache) > _RPM_CACHE_SIZE:
                self._rpm_cache.popitem(last=False)

    def _orders(self, items: Sequence[Measurement]) -> F64:
        return np.stack([_line_orders(it.geometry or self.default_geometry) for it in items])

    def profile_windows(self, items: Sequence[Window]) -> dict[str, float]:
        """Seconds each stage of the window view took for ``items`` (one shape): what
        ``bench/encode.py`` prints, measured on the encoder's own sequence."""
        start = time.perf_counter()
        (block,) = window_blocks(items, max_s=self.window_s)
        timings = {"spectrum": time.perf_counter() - start}
        self._window_group(block, timings)
        return timings

    def _window_group(self, block: WindowBlock, timings: dict[str, float] | None = None) -> F64:
        """Window features of one block (equal-shaped windows cut to ``window_s``);
        ``timings``, when given, gets each stage's seconds added under its name."""
        clock = [time.perf_counter()]

        def lap(stage: str) -> None:
            if timings is not None:
                now = time.perf_counter()
                timings[stage] = timings.get(stage, 0.0) + now - clock[0]
                clock[0] = now

        p = self.params
        self._check_block(block)
        items, x, spec, mag = block.windows, block.samples, block.spectrum, block.amplitude
        n = block.n
        fs = block.fs
        df = fs / n
        lap("spectrum")
        shaft = self._rpms(items, mag, df) / 60.0
        orders = self._orders(items)
        lap("speed")
        bands = select_bands(spec, n, fs, orders[:, _BPFI_COLUMN] * shaft)
        lap("band selection")
        env, env_df = squared_envelope_spectra(spec, n, fs, bands)
        lap("demodulation")
        stats = ft.time_stats(x, block.moments)
        feats = np.concatenate(
            [
                stats[:, :3],
                ft.band_kurtosis_feature(bands.kurtosis)[:, None],
                ft.line_prominence(env, env_df, shaft, orders, p),
                ft.order_profile(env, env_df, shaft, p),
                ft.line_prominence(mag, df, shaft, orders, p),
            ],
            axis=1,
        )
        lap("features")
        return feats

    def _spectrum_group(self, items: Sequence[SpectrumFrame]) -> F64:
        p = self.params
        first = items[0]
        n_bins = first.n_fft // 2 + 1
        for it in items:
            if it.magnitude.shape != (n_bins,):
                raise ValueError(
                    f"spectrum has {it.magnitude.shape} bins, expected ({n_bins},) for "
                    f"n_fft={it.n_fft}"
                )
        mag = np.stack([np.asarray(it.magnitude, dtype=np.float64) for it in items])
        if not np.all(np.isfinite(mag)) or np.any(mag < 0):
            raise ValueError("spectrum magnitudes must be finite and non-negative")
        df = float(first.fs) / first.n_fft
        if n_bins < MIN_SAMPLES // 2:
            raise ValueError(f"spectrum too short: n_fft={first.n_fft}, need {MIN_SAMPLES}")
        shaft = self._rpms(items, mag, df) / 60.0
        orders = self._orders(items)
        comb = ft.comb_correlation(mag, df, p)
        return np.concatenate(
            [
                ft.band_profile(mag, df, p),
                ft.line_prominence(mag, df, shaft, orders, p),
                ft.line_prominence(comb, df, shaft, orders, p, log_scale=False),
                ft.order_profile(comb, df, shaft, p, log_scale=False),
            ],
            axis=1,
        )
