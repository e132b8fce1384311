"""Raw windows of one shape, stacked once with their spectrum, for every per-window step.

A diagnosis reads each window several times: the encoder's features, the signal-quality
gate (:mod:`faultline.encoders.quality`) and the velocity RMS
(:mod:`faultline.encoders.severity`) all start from the same samples and the same rfft.
Stacking the samples and transforming them once per batch, instead of once per step, was
about a fifth of the cost of a diagnosis; the same goes for the samples' mean, spread and
extremes (the time features and the quality gate). A :class:`WindowBlock` is that shared start,
built by :func:`window_blocks` and handed to each step through an explicit parameter.

Pure numpy/scipy; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
from faultline.encoders.signals import Measurement, Window, shape_groups

__all__ = ["WindowBlock", "window_blocks"]

F64 = npt.NDArray[np.float64]
C128 = npt.NDArray[np.complex128]


@dataclass(frozen=True, slots=True)
class WindowBlock:
    """Equal-shaped raw windows of a batch and what every step computes from them first.

    ``positions``: where each row's window sits in the batch; ``samples``: (rows, n)
    float64, as sent (or cut, see :func:`window_blocks`); ``spectrum``:
    ``scipy.fft.rfft(samples, axis=-1)``; ``amplitude``: the Hann amplitude spectra,
    ``hann_spectra_from_rfft(spectrum, n)``; ``moments``: ``sample_moments(samples)``
    (mean, spread, extremes: the time features and the quality gate read the same).
    Read-only by convention: steps share them.
    """

    fs: float
    positions: tuple[int, ...]
    windows: tuple[Window, ...]
    samples: F64
    spectrum: C128
    amplitude: F64
    moments: SampleMoments

    @property
    def n(self) -> int:
        """Samples per row."""
        return int(self.samples.shape[-1])

    def cut(self, max_s: float) -> WindowBlock:
        """The block with rows cut to their first ``ceil(max_s * fs)`` samples (itself when
        they are no longer): the encoder reads ``window_s`` of a longer window."""
        keep = _keep(self.n, self.fs, max_s)
        if keep >= self.n:
            return self
        return _block(self.fs, self.positions, self.windows, self.samples[:, :keep])


def _keep(size: int, fs: float, max_s: float | None) -> int:
    return size if max_s is None else min(size, max(1, math.ceil(max_s * fs)))


def _block(
    fs: float, positions: tuple[int, ...], windows: tuple[Window, ...], samples: F64
) -> WindowBlock:
    samples = np.ascontiguousarray(samples)
    n = samples.shape[-1]
    # Non-finite rows are refused by the encoder and named by the quality gate; their
    # transforms are NaN and must not warn on the way.
    with np.errstate(invalid="ignore", over="ignore"):
        spectrum = sfft.rfft(samples, axis=-1)
        amplitude = np.empty(spectrum.shape)
        for rows in row_chunks(spectrum.shape[0], spectrum[0].nbytes):
            hann_spectra_from_rfft(spectrum[rows], n, out=amplitude[rows])
    moments = sample_moments(samples)
    return WindowBlock(fs, positions, windows, samples, spectrum, amplitude, moments)


def window_blocks(
    measurements: Sequence[Measurement], *, max_s: float | None = None
) -> list[WindowBlock]:
    """The raw windows of ``measurements`` grouped by shape (rate, samples), one block per
    group in :func:`~faultline.encoders.signals.shape_groups`' order; sensor spectra have
    no samples and are skipped.

    ``max_s``: rows are cut to their first ``ceil(max_s * fs)`` samples (the encoder reads
    ``window_s`` of a longer window); None keeps them whole (the quality gate and the
    velocity read all of it).
    """
    blocks: list[WindowBlock] = []
    for (fs, size), rows in shape_groups(measurements).items():
        found = [(i, m) for i in rows if isinstance(m := measurements[i], Window)]
        if not found:
            continue
        keep = _keep(size, fs, max_s)
        samples = np.empty((len(found), keep))
        for row, (_, w) in zip(samples, found, strict=True):
            row[:] = w.samples[:keep]  # cast to float64 on the copy, not before it
        positions = tuple(i for i, _ in found)
        blocks.append(_block(fs, positions, tuple(w for _, w in found), samples))
    return blocks
