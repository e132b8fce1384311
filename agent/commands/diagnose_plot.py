"""``faultline diagnose FILE --plot OUT.png``: one picture of what an analyst checks a
verdict against.

Top: the window's spectrum (dB) with the demodulation band the encoder chose shaded.
Middle: the squared-envelope spectrum of that band with the bearing's defect frequencies
(BPFO, BPFI, BSF, FTF and their harmonics, the shaft's 1x) at the speed the diagnosis used.
Right: the verdict, its reason and line evidence, the speed and bearing, the band, and the
nearest library signatures. The numbers come from :mod:`faultline.agent.dashboard.spectra`,
the same code the web dashboard draws, so the two never disagree about a line.

matplotlib is an optional extra (``faultline[plot]``): the gateway image does not carry
it. It is drawn with the Agg canvas directly (no pyplot, no display, no global state).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faultline.agent.dashboard.spectra import spectra_of
from faultline.encoders.geometry import BearingGeometry
from faultline.encoders.signals import Window
from faultline.fault_library.diagnosis import WindowResult

__all__ = [
    "INSTALL_HINT",
    "PLOT_SIZE_PX",
    "PlotUnavailableError",
    "decisive_window",
    "require_matplotlib",
    "write_plot",
]

INSTALL_HINT = (
    "--plot needs matplotlib, an optional extra: pip install 'faultline[plot]' "
    "(in a checkout: .venv/bin/pip install -e '.[plot]')"
)
PLOT_SIZE_PX = (1600, 1000)
"""Width and height of the PNG in pixels."""
_DPI = 100
_POINTS = 4000
"""Spectrum points kept per curve: more than the plot's pixel columns, so no line is lost."""
COLOURS = {
    "1x": "#555555",
    "BPFO": "#d62728",
    "BPFI": "#1f77b4",
    "BSF": "#2ca02c",
    "FTF": "#9467bd",
}


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed."""


def require_matplotlib() -> None:
    """Fail before any work when the plot cannot be drawn (missing or broken matplotlib)."""
    try:
        import matplotlib.backends.backend_agg
        import matplotlib.figure  # noqa: F401
    except ImportError as exc:
        raise PlotUnavailableError(f"{INSTALL_HINT} ({exc})") from None


def decisive_window(results: Sequence[WindowResult], label: str) -> int:
    """The window that says ``label`` (the recording's verdict) most confidently; the most
    confident window of all when none says it."""
    voters = [i for i, r in enumerate(results) if r.verdict.label == label]
    pool = voters or list(range(len(results)))
    return max(pool, key=lambda i: (results[i].verdict.confidence, -i))


def write_plot(
    path: str | Path,
    window: Window,
    result: WindowResult,
    geometry: BearingGeometry,
    *,
    title: str,
    overall: dict[str, Any],
    neighbours: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """Draw ``window``'s evidence into ``path`` (PNG); returns what was drawn."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = spectra_of(window, result.rpm, geometry, _POINTS)
    envelope = data["envelope"]
    band = envelope["band"]
    fig = Figure(figsize=(PLOT_SIZE_PX[0] / _DPI, PLOT_SIZE_PX[1] / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, width_ratios=(2.6, 1.0), hspace=0.32, wspace=0.06)
    _draw_spectrum(fig.add_subplot(grid[0, 0]), data["spectrum"], band)
    _draw_envelope(fig.add_subplot(grid[1, 0]), envelope, data["markers"], band)
    text = fig.add_subplot(grid[:, 1])
    text.axis("off")
    text.text(
        0.0,
        1.0,
        _panel(result, overall, neighbours, geometry, band, window),
        va="top",
        ha="left",
        family="monospace",
        fontsize=9,
        wrap=True,
        transform=text.transAxes,
    )
    fig.suptitle(title, fontsize=13, x=0.01, ha="left")
    fig.subplots_adjust(left=0.06, right=0.99, top=0.92, bottom=0.07)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=_DPI)
    return {"band": band, "markers": len(data["markers"]), "rpm": result.rpm}


def _axis(values: list[float], df: float) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    y = np.asarray(values, dtype=np.float64)
    return np.arange(y.size) * df, y


def _draw_spectrum(ax: Any, spectrum: dict[str, Any], band: dict[str, float]) -> None:
    hz, mag = _axis(spectrum["values"], spectrum["df"])
    db = 20.0 * np.log10(np.maximum(mag, 1e-12))
    ax.plot(hz, db, lw=0.6, color="#333333")
    low = band["centre_hz"] - band["bandwidth_hz"] / 2.0
    high = band["centre_hz"] + band["bandwidth_hz"] / 2.0
    ax.axvspan(
        low,
        high,
        color="#ff7f0e",
        alpha=0.18,
        label=f"demodulation band {low:,.0f}-{high:,.0f} Hz (spectral kurtosis "
        f"{band['kurtosis']:.1f})",
    )
    floor = np.percentile(db[1:], 1) if db.size > 1 else float(db.min())
    ax.set_ylim(floor - 5.0, float(db.max()) + 5.0)
    ax.set_xlim(0.0, float(hz[-1]))
    ax.set_title("spectrum (Hann window)", loc="left", fontsize=10)
    ax.set_xlabel("frequency (Hz)")
    ax.set_ylabel("magnitude (dB)")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)


def _draw_envelope(
    ax: Any, envelope: dict[str, Any], markers: list[dict[str, Any]], band: dict[str, float]
) -> None:
    hz, power = _axis(envelope["values"], envelope["df"])
    ax.plot(hz, power, lw=0.8, color="#333333")
    top = float(power[hz > 5.0].max()) if np.any(hz > 5.0) else float(power.max())
    ax.set_ylim(0.0, top * 1.15 if top > 0 else 1.0)
    ax.set_xlim(0.0, float(hz[-1]))
    labelled: set[str] = set()
    rows = {family: row for row, family in enumerate(COLOURS)}
    for marker in markers:
        if marker["hz"] > hz[-1]:
            continue
        family = marker["family"]
        fundamental = marker["k"] == 1
        ax.axvline(
            marker["hz"],
            color=COLOURS.get(family, "#000000"),
            lw=1.2 if fundamental else 0.8,
            ls="-" if fundamental else "--",
            alpha=0.85 if fundamental else 0.55,
            label=None if family in labelled else f"{family} {marker['hz']:.1f} Hz + harmonics",
        )
        labelled.add(family)
        ax.annotate(  # one text row per family, so close lines of two families stay legible
            family if fundamental else f"{marker['k']}x",
            xy=(marker["hz"], 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -9 - 9 * rows.get(family, 0)),
            textcoords="offset points",
            fontsize=7,
            color=COLOURS.get(family, "#000000"),
        )
    ax.set_title(
        f"squared-envelope spectrum of the band {band['centre_hz']:,.0f} Hz "
        f"+- {band['bandwidth_hz'] / 2:,.0f} Hz, with defect frequencies",
        loc="left",
        fontsize=10,
    )
    ax.set_xlabel("frequency (Hz)")
    ax.set_ylabel("power")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)


def _panel(
    result: WindowResult,
    overall: dict[str, Any],
    neighbours: Sequence[dict[str, Any]],
    geometry: BearingGeometry,
    band: dict[str, float],
    window: Window,
) -> str:
    verdict = result.verdict
    lines = [
        f"RECORDING: {overall['label']}  ({overall['confidence']:.2f})",
        *_wrapped(overall.get("reason"), "  "),
        "",
        f"THIS WINDOW (at {window.meta.get('offset_s', 0.0)} s):",
        f"  {verdict.label}  confidence {verdict.confidence:.2f}",
        *_wrapped(verdict.reason, "  reason: "),
        *_wrapped(verdict.evidence, "  lines: "),
        "",
        f"speed   {result.rpm:.0f} rpm ({result.rpm_source})",
        f"bearing {geometry.name}",
        f"band    {band['centre_hz']:,.0f} Hz, {band['bandwidth_hz']:,.0f} Hz wide",
        f"        spectral kurtosis {band['kurtosis']:.2f}",
        "",
        "NEAREST SIGNATURES:",
    ]
    for i, n in enumerate(neighbours, 1):
        lines.append(f" {i}. {n['score']:.3f} {n['label']}  ({n['id']})")
        lines.append(f"    {_provenance(n)}")
    return "\n".join(lines)


def _provenance(n: dict[str, Any]) -> str:
    """Where a neighbour came from, in a few words (its row's columns)."""
    parts = []
    if n.get("asset"):
        parts.append(f"asset {n['asset']}")
    if n.get("record_id"):
        at = f" at {n['offset_s']:g} s" if n.get("offset_s") is not None else ""
        parts.append(f"record {n['record_id']}{at}")
    if n.get("fault_size_in"):
        parts.append(f'{n["fault_size_in"]:g}"')
    if n.get("load_hp") is not None:
        parts.append(f"{n['load_hp']} hp")
    return ", ".join(parts) or "-"


def _wrapped(text: str | None, prefix: str, width: int = 44) -> list[str]:
    if not text:
        return []
    words, out, line = text.split(), [], prefix
    for word in words:
        if len(line) + len(word) + 1 > width and line.strip():
            out.append(line)
            line = " " * len(prefix) if prefix.strip() else prefix
        line += ("" if line.endswith(" ") or not line.strip() else " ") + word
    out.append(line)
    return out[:6]
