"""Signal-quality gate: can a vibration window be read at all, before it is diagnosed?

A window that fails the gate is never called a fault; the agent reports the quality reason
instead. :func:`assess` checks each row of a batch, in this order, and the first failing
check wins:

* ``constant``: the sensor sends (nearly) one value: std tiny against the signal's level,
  or fewer than :data:`CONSTANT_MAX_DISTINCT` distinct values (a stuck or disconnected
  sensor, or vibration below the ADC's resolution).
* ``dropout``: lost data: a run of exactly repeated values longer than
  max(:data:`DROPOUT_MIN_RUN`, :data:`DROPOUT_MIN_RUN_S` * fs) samples away from the rails
  (a zero-filled packet, a held last value), a large share of exact zeros (many short
  zero-filled gaps), or non-finite samples (NaN/inf; checked first, since no other
  statistic is defined on them).
* ``clipped``: at least :data:`CLIP_SHARE` of the samples sit at the window's max or min
  (within :data:`CLIP_REL_TOL` of the peak-to-peak), in runs of two or more: a saturated
  amplifier or ADC, a square wave. An impact peak reaches the extreme in one sample.
* ``tone``: one spectral line (peak bin +-:data:`TONE_HALF_WIDTH_BINS` of a Hann power
  spectrum) holds at least :data:`TONE_SHARE` of the AC power: mains pickup (50/60 Hz) on
  a broken or unshielded sensor line, a calibrator or signal generator on the input.

Flat runs *at* the rails are clipping, not dropout, so a clipped sine or a square wave is
reported as ``clipped``; runs of exact zeros always count as dropout, because zero is what
lost packets are filled with, and on a sensor with a DC offset it becomes the window's min.

Measured margins on real data (every 1-s window, hop 1 s, of the 40 CWRU records' DE/FE/BA
channels at 12 and 48 kHz and the 16 UESTC files at 20 kHz; 1328 windows): smallest std
0.0073 (constant limit 1e-6), fewest distinct values 1577 (limit 8), longest run of repeated
values 3 samples (limit 32 at 12 kHz), largest share of exact zeros 0.2 % (limit 5 %), largest
share of samples at the rails in runs 0 (limit 0.5 %; the rails are reached by 1-6 isolated
samples), largest single-line power share 59.6 % (limit 90 %), kurtosis up to 149 and crest
factor up to 26 (impacts) without a flag.

Cost, one core: about 0.25 ms per 12,000-sample window (0.18 ms when the caller passes the
rfft it already has), 0.75 ms per 48,000-sample one: one rfft plus a few passes over the
samples. Run lengths and distinct values are only counted on rows that could fail.

:func:`speed_quality` is the separate gate for the shaft speed the order features need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

from faultline.encoders.dsp import (
    SampleMoments,
    hann_spectra_from_rfft,
    row_chunks,
    sample_moments,
)

__all__ = [
    "CLIP_REL_TOL",
    "CLIP_SHARE",
    "CONSTANT_MAX_DISTINCT",
    "CONSTANT_RAIL_SHARE",
    "CONSTANT_REL_STD",
    "DROPOUT_MIN_RUN",
    "DROPOUT_MIN_RUN_S",
    "DROPOUT_ZERO_SHARE",
    "MIN_SAMPLES",
    "QUALITY_CODES",
    "TONE_HALF_WIDTH_BINS",
    "TONE_SHARE",
    "Quality",
    "assess",
    "speed_quality",
]

F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

_BLOCK_BYTES = 1 << 20
"""Rows are assessed in blocks of about this many bytes of samples (float64), which keeps
the temporaries in cache. Most of the work is on one-byte masks of the samples, so the
blocks are larger than dsp.CHUNK_BYTES. Measured on 16 windows with the block's spectra:
256 KB 0.146, 512 KB 0.103, 1 MB 0.083, 4 MB 0.088 ms per 12 kHz window; 0.63, 0.61,
0.59, 1.18 ms per 48 kHz window."""

QUALITY_CODES: tuple[str, ...] = ("constant", "clipped", "tone", "dropout", "speed_unknown")
"""Every reason a window (or its speed) can fail; ``"ok"`` is not among them."""

MIN_SAMPLES = 64
"""Shorter rows give no meaningful spectrum or run statistics; :func:`assess` refuses them."""

CONSTANT_REL_STD = 1e-6
"""Constant when std < this * max(|mean|, 1). Relative to the level, because a stuck sensor
with a DC offset still wobbles in the last float digits; the floor of 1 (g or m/s^2) sits far
below any accelerometer's noise floor. Real windows: smallest std 0.0073, 7000x above."""

CONSTANT_MAX_DISTINCT = 8
"""Constant when the row holds fewer distinct values than this: vibration below the ADC's
resolution (a few codes of quantisation noise). Real windows hold at least 1577."""

CONSTANT_RAIL_SHARE = 0.5
"""...unless at least this share of the samples sits at the two extremes: a few-valued row
that lives at its rails (a square wave, a signal driven hard into saturation) is left to the
clipped check, which names it better. Quantisation noise piles up in the middle codes."""

DROPOUT_MIN_RUN = 32
"""A run of exactly repeated samples longer than max(this, DROPOUT_MIN_RUN_S * fs) is a
dropout. Real vibration never repeats a float sample more than a few times (3 at most on
CWRU/UESTC); 32 is the smallest packet a sensor would plausibly lose or hold."""

DROPOUT_MIN_RUN_S = 0.002
"""The same limit in time (2 ms), so it scales with fs: 96 samples at 48 kHz. Long enough
that slow, coarsely quantised signals do not trip it, short enough for a lost packet."""

DROPOUT_ZERO_SHARE = 0.05
"""Dropout when at least this share of the samples is exactly 0: many short zero-filled gaps,
each below the run limit. Quantisation alone gives this many zeros only when the std is
below ~8 ADC codes; real windows have at most 0.2 % (25x margin)."""

CLIP_SHARE = 0.005
"""Clipped when at least this share (0.5 %) of the samples sits at the rails in runs: 60 of
12,000, i.e. flat tops on a few cycles. Impacts (kurtosis to 150, crest factor to 26 on the
real data) reach the extreme with 1-6 isolated samples, and isolated samples do not count."""

CLIP_REL_TOL = 1e-6
"""A sample is at a rail when within this fraction of the peak-to-peak of the max or min.
Saturation repeats the rail value (to float rounding, ~1e-7); a pure sine spends
2*sqrt(2*r)/pi of its time within r (relative to amplitude) of its peaks, so a tolerance of
1e-6 p-p (r = 2e-6) keeps an unclipped sine at 0.13 %, 4x below CLIP_SHARE, while any
clipping deeper than ~0.003 % of the amplitude is caught. (A tone quantised by a coarse ADC
repeats its top code and may read as clipped rather than tone; it fails the gate either way.)"""

TONE_SHARE = 0.9
"""Tone when one line holds at least this share of the AC power. A sinusoid with noise 20 dB
down still holds ~99 %; real machine vibration (shaft harmonics, bearing resonances,
broadband) peaks at 59.6 % on CWRU/UESTC; a strong 1x-3x over broadband holds ~66 %."""

TONE_HALF_WIDTH_BINS = 3
"""A line's power is summed over its peak bin +-3: the periodic Hann main lobe spans +-2 bins,
one more bin keeps >99.9 % of an off-bin sinusoid's power (sidelobes are -31 dB)."""


@dataclass(frozen=True, slots=True)
class Quality:
    """Verdict of a quality check: ``code`` is ``"ok"`` or one of :data:`QUALITY_CODES`.

    ``reason`` is human text with the measured figure, ``None`` exactly when ``ok``.
    """

    code: str
    reason: str | None

    def __post_init__(self) -> None:
        if self.code != "ok" and self.code not in QUALITY_CODES:
            raise ValueError(
                f"unknown quality code {self.code!r}; expected 'ok' or {QUALITY_CODES}"
            )
        if (self.reason is None) != (self.code == "ok"):
            raise ValueError(f"quality {self.code!r}: reason must be given exactly when not ok")

    @property
    def ok(self) -> bool:
        return self.code == "ok"


_OK = Quality("ok", None)


def assess(
    x: npt.ArrayLike,
    fs: float,
    *,
    spectrum: npt.NDArray[np.complex128] | None = None,
    amplitude: npt.NDArray[np.float64] | None = None,
    moments: SampleMoments | None = None,
) -> list[Quality]:
    """x: (n_windows, n_samples) or (n_samples,) float; returns one Quality per row.

    Checks run in the order constant, dropout, clipped, tone; first failing wins (non-finite
    samples are reported as dropout before the rest, which cannot be measured on them).
    ``spectrum``, if the caller already has it, is ``scipy.fft.rfft`` of the unwindowed rows
    (shape ``(n_windows, n_samples // 2 + 1)``, or 1-D for a 1-D ``x``); the Hann window and
    the mean removal are then applied to it, so no FFT is computed here. ``amplitude``,
    with ``spectrum``, is ``hann_spectra_from_rfft(spectrum, n_samples)`` (the encoder's
    raw spectrum): removing the mean only changes its bins 0 and 1, which are recomputed,
    so the Hann window is not applied again either. ``moments``: ``sample_moments`` of the
    rows (the encoder's too), so their mean, spread and extremes are not computed again.
    """
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim not in (1, 2):
        raise ValueError(f"x must be 1-D or 2-D (windows, samples), got shape {arr.shape}")
    rows = np.atleast_2d(arr)
    n_rows, n = rows.shape
    if n_rows == 0:
        return []
    if n < MIN_SAMPLES:
        raise ValueError(f"windows need at least {MIN_SAMPLES} samples, got {n}")
    if not (math.isfinite(fs) and fs > 0):
        raise ValueError(f"fs must be a positive number, got {fs}")
    spec = None if spectrum is None else _checked_spectrum(spectrum, n_rows, n)
    amp = None
    if amplitude is not None:
        if spec is None:
            raise ValueError("amplitude is read with the spectrum it came from: pass both")
        amp = np.atleast_2d(np.asarray(amplitude, dtype=np.float64))
        if amp.shape != spec.shape:
            raise ValueError(f"amplitude must have the spectrum's shape {spec.shape}")
    out: list[Quality] = []
    for block in row_chunks(n_rows, 8 * n, _BLOCK_BYTES):
        out += _assess_block(
            rows[block],
            fs,
            None if spec is None else spec[block],
            None if amp is None else amp[block],
            None if moments is None else SampleMoments(*(m[block] for m in moments)),
        )
    return out


def _assess_block(
    rows: F64, fs: float, spec: C128 | None, amp: F64 | None, moments: SampleMoments | None
) -> list[Quality]:
    n_rows, n = rows.shape
    out: list[Quality | None] = [None] * n_rows
    if moments is None:
        moments = sample_moments(rows)
    # A finite mean means finite samples (NaN and inf propagate into the sum), so the
    # samples themselves are only checked in rows whose mean is not finite.
    if not np.isfinite(moments.mean).all():
        finite = np.isfinite(rows)
        bad = ~finite.all(axis=1)
        if bad.any():
            for i in np.flatnonzero(bad):
                k = int(n - np.count_nonzero(finite[i]))
                out[i] = Quality("dropout", f"dropout: {k} non-finite samples (NaN/inf)")
            rows = np.where(finite, rows, 0.0)
            moments = sample_moments(rows)

    mean = moments.mean
    std = np.sqrt(moments.var)
    hi = moments.top
    lo = moments.bottom
    tol = CLIP_REL_TOL * (hi - lo)
    at_hi = rows >= (hi - tol)[:, None]
    at_lo = rows <= (lo + tol)[:, None]
    rail_count = _count_per_row(at_hi) + _count_per_row(at_lo)
    _check_constant(rows, mean, std, rail_count, out)
    _check_dropout(rows, fs, at_hi, at_lo, out)
    _check_clipped(at_hi, at_lo, rail_count, hi, lo, out)

    todo = np.flatnonzero([q is None for q in out])
    if todo.size:
        every = todo.size == n_rows  # the usual case: no copy of the rows' spectra
        if amp is not None and spec is not None:
            share, peak_bin = _tone_share(
                spec[:, :3] if every else spec[todo, :3], n, amp if every else amp[todo]
            )
        else:
            sub = sfft.rfft(rows[todo], axis=1) if spec is None else spec[todo]
            share, peak_bin = _tone_share(sub, n)
        for j, i in enumerate(todo):
            if share[j] >= TONE_SHARE:
                out[i] = Quality(
                    "tone",
                    f"tone: {100 * share[j]:.1f} % of AC power in one line at "
                    f"{peak_bin[j] * fs / n:.1f} Hz (limit {100 * TONE_SHARE:.0f} %)",
                )
    return [_OK if q is None else q for q in out]


def speed_quality(rpm: float | None, confidence: float | None, *, min_confidence: float) -> Quality:
    """``speed_unknown`` when there is no usable shaft speed, else ok.

    No speed: ``rpm`` is None, not finite or not positive. An estimated speed (``confidence``
    given, as from :func:`faultline.encoders.speed.estimate_rpm`) also fails when its
    confidence is below ``min_confidence`` (or NaN). ``confidence=None`` means the speed was
    given (measured or configured), so it is trusted.
    """
    if not math.isfinite(min_confidence):
        raise ValueError(f"min_confidence must be a finite number, got {min_confidence}")
    if rpm is None:
        return Quality("speed_unknown", "speed_unknown: no shaft speed (none given or estimated)")
    if not (math.isfinite(rpm) and rpm > 0):
        return Quality("speed_unknown", f"speed_unknown: rpm {rpm} is not a positive number")
    if confidence is not None and not confidence >= min_confidence:
        return Quality(
            "speed_unknown",
            f"speed_unknown: estimated {rpm:.0f} rpm has confidence {confidence:.2f}"
            f" < {min_confidence:.2f}",
        )
    return _OK


def _checked_spectrum(spectrum: npt.NDArray[np.complex128], n_rows: int, n: int) -> C128:
    spec = np.atleast_2d(np.asarray(spectrum, dtype=np.complex128))
    expected = (n_rows, n // 2 + 1)
    if spec.shape != expected:
        raise ValueError(
            f"spectrum must be the rfft of the rows, shape {expected}, got {spec.shape}"
        )
    return spec


def _check_constant(
    rows: F64, mean: F64, std: F64, rail_count: I64, out: list[Quality | None]
) -> None:
    n = rows.shape[1]
    limit = CONSTANT_REL_STD * np.maximum(np.abs(mean), 1.0)
    flat = std < limit
    # Fewer than CONSTANT_MAX_DISTINCT values in the row means fewer in any subset, so
    # ~64 evenly spaced samples screen for it; only rows that pass the screen are counted.
    step = max(1, n // 64)
    probe = np.sort(rows[:, ::step], axis=1)
    few = np.count_nonzero(np.diff(probe, axis=1), axis=1) + 1 < CONSTANT_MAX_DISTINCT
    for i in np.flatnonzero(flat | few):
        if out[i] is not None:
            continue
        if flat[i]:
            out[i] = Quality(
                "constant",
                f"constant: std {std[i]:.3g} at level {mean[i]:.4g} (limit {limit[i]:.3g})",
            )
            continue
        distinct = int(np.unique(rows[i]).size)
        if distinct < CONSTANT_MAX_DISTINCT and rail_count[i] < CONSTANT_RAIL_SHARE * n:
            out[i] = Quality(
                "constant",
                f"constant: only {distinct} distinct values (std {std[i]:.3g}, "
                f"limit {CONSTANT_MAX_DISTINCT})",
            )


def _check_dropout(
    rows: F64, fs: float, at_hi: Bool, at_lo: Bool, out: list[Quality | None]
) -> None:
    n = rows.shape[1]
    limit = max(DROPOUT_MIN_RUN, math.ceil(DROPOUT_MIN_RUN_S * fs))
    zero_share = _count_per_row(rows == 0.0) / n
    repeat = rows[:, 1:] == rows[:, :-1]  # joins sample i to i - 1
    # A run of more than `limit` samples needs at least `limit` repeats in the row.
    maybe = np.flatnonzero(_count_per_row(repeat) >= limit)
    for row in maybe.tolist():
        if out[row] is not None:
            continue
        joined = np.flatnonzero(repeat[row])  # repeat j joins sample j + 1 to sample j
        tail = joined + 1
        # Runs at a rail are clipping, unless they are zeros (lost packets).
        keep = ~(at_hi[row, tail] | at_lo[row, tail]) | (rows[row, tail] == 0.0)
        length, end = _longest_run(joined[keep])
        run = length + 1  # k repeats join k + 1 samples
        if run > limit:
            start = end - run + 2  # index into rows, not into repeat
            out[row] = Quality(
                "dropout",
                f"dropout: {run} repeated samples ({1000 * run / fs:.1f} ms) of value "
                f"{rows[row, start]:.4g} from t={start / fs:.3f} s (limit {limit} samples)",
            )
    for i in np.flatnonzero(zero_share >= DROPOUT_ZERO_SHARE):
        if out[i] is None:
            out[i] = Quality(
                "dropout",
                f"dropout: {100 * zero_share[i]:.1f} % of samples are exactly 0 "
                f"(limit {100 * DROPOUT_ZERO_SHARE:.0f} %)",
            )


def _count_per_row(mask: Bool) -> I64:
    """``np.count_nonzero(mask, axis=1)``, row by row: numpy counts along an axis by
    summing integers, three to four times slower than its whole-array count."""
    return np.array([np.count_nonzero(row) for row in mask], dtype=np.int64)


def _longest_run(positions: npt.NDArray[np.intp]) -> tuple[int, int]:
    """Length of the longest run of consecutive ``positions`` (ascending) and its last
    position (the first such run; 0 and 0 when there are none).

    Read from the repeated samples' positions alone: rows get here because they hold many
    repeats, which is still a small share of them (about 100 in 48,000 on CWRU 97.mat),
    so this costs one pass over the row's mask instead of five over int64 arrays of its
    length.
    """
    if positions.size == 0:
        return 0, 0
    last = np.flatnonzero(np.diff(positions) != 1)  # runs end where the positions jump
    run_end = np.append(last, positions.size - 1)
    run_length = run_end - np.concatenate(([-1], last))
    first_longest = int(np.argmax(run_length))
    return int(run_length[first_longest]), int(positions[run_end[first_longest]])


def _check_clipped(
    at_hi: Bool, at_lo: Bool, rail_count: I64, hi: F64, lo: F64, out: list[Quality | None]
) -> None:
    n = at_hi.shape[1]
    # Samples in runs are a subset of the samples at the rails: screen on the latter.
    for i in np.flatnonzero(rail_count >= CLIP_SHARE * n):
        if out[i] is not None:
            continue
        share = (_in_runs(at_hi[i]) + _in_runs(at_lo[i])) / n
        if share >= CLIP_SHARE:
            pp = hi[i] - lo[i]
            rails = (
                f"+-{hi[i]:#.4g}"
                if abs(hi[i] + lo[i]) <= 1e-3 * pp
                else f"{lo[i]:#.4g} .. {hi[i]:#.4g}"
            )
            out[i] = Quality(
                "clipped", f"clipped: {100 * share:.1f} % of samples at the rails ({rails})"
            )


def _in_runs(mask: Bool) -> int:
    """How many True samples have a True neighbour (belong to a run of two or more)."""
    neighbour = np.zeros_like(mask)
    neighbour[1:] |= mask[:-1]
    neighbour[:-1] |= mask[1:]
    return int(np.count_nonzero(mask & neighbour))


def _tone_share(spec: C128, n: int, amplitude: F64 | None = None) -> tuple[F64, I64]:
    """Share of AC power in the strongest line, and its bin, from rfft rows of length n.

    The periodic Hann's DFT is (-1/4, 1/2, -1/4), so the window is applied to the spectrum;
    the DC bin is taken as 0 there, which is the same as removing the mean first. Its three
    taps carry the DC bin into bins 0 and 1 only, so given the Hann ``amplitude`` of the
    rows as they are, only those two bins are recomputed (and ``spec`` needs only its first
    three bins).
    """
    without_mean = None
    if amplitude is None:
        without_mean = spec.copy()
        without_mean[:, 0] = 0.0
        amplitude = hann_spectra_from_rfft(without_mean, n)
    # Amplitudes carry the one-sided factor 2 on every bin but DC and Nyquist; squared,
    # that is 4x. Power counts those bins twice (positive and negative frequency), so the
    # edge bins get the missing 2x back; the common scale cancels in the share.
    power: F64 = np.square(amplitude)
    if without_mean is None:
        head = spec[:, :3].copy()
        head[:, 0] = 0.0
        power[:, :2] = np.square(hann_spectra_from_rfft(head, n, bins=2))
    power[:, 0] *= 2.0
    if n % 2 == 0:
        power[:, -1] *= 2.0
    n_bins = power.shape[1]
    total = power.sum(axis=1)
    peak = np.argmax(power, axis=1)
    offsets = peak[:, None] + np.arange(-TONE_HALF_WIDTH_BINS, TONE_HALF_WIDTH_BINS + 1)
    inside = (offsets >= 0) & (offsets < n_bins)
    line = np.take_along_axis(power, np.clip(offsets, 0, n_bins - 1), axis=1)
    line_power = np.where(inside, line, 0.0).sum(axis=1)
    share: F64 = np.divide(line_power, total, out=np.zeros_like(total), where=total > 0)
    return share, peak.astype(np.int64)
