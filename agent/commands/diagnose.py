"""``faultline diagnose PATH``: diagnose a recording offline, no broker needed."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from faultline.agent.app import default_library_root, encoder_from_settings, policy_from_settings
from faultline.agent.commands.diagnose_plot import (
    PlotUnavailableError,
    decisive_window,
    require_matplotlib,
    write_plot,
)
from faultline.agent.commands.feedback import Feedback, add_feedback_args
from faultline.agent.commands.recording_args import add_recording_args, recording_from_args
from faultline.agent.commands.run import settings_or_exit
from faultline.agent.library_setup import load_or_build_library
from faultline.encoders.signals import Window
from faultline.fault_library.diagnosis import WindowResult, diagnose_batch
from faultline.fault_library.library import FaultLibrary
from faultline.fault_library.recordings import RecordingError, iter_windows
from faultline.fault_library.verdict import aggregate


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "diagnose",
        help="diagnose a recording file offline",
        description=(
            "Cut a recording (.mat CWRU, .npz, .wav, .csv) into windows, diagnose each with "
            "the same encoder, library and vote as the running agent, and aggregate them "
            "into one verdict for the recording."
        ),
    )
    parser.add_argument("path", help="recording file")
    add_feedback_args(parser)
    parser.add_argument("--per-window", action="store_true", help="include every window's verdict")
    parser.add_argument("--config", "-c", default=None, help="YAML configuration file")
    parser.add_argument("--library", default=None, help="fault library root (default: config's)")
    parser.add_argument("--window", type=float, default=None, help="window length in s")
    parser.add_argument(
        "--asset", default=None, help="judge against this enrolled asset's own healthy baseline"
    )
    parser.add_argument(
        "--plot",
        metavar="OUT.png",
        default=None,
        help="also draw one window's evidence as a PNG: its spectrum with the chosen "
        "demodulation band, the squared-envelope spectrum of that band with BPFO/BPFI/BSF/FTF "
        "and their harmonics and the shaft's 1x at the speed used, the verdict and the "
        "nearest signatures. Needs the 'plot' extra (matplotlib)",
    )
    parser.add_argument(
        "--plot-window",
        metavar="N",
        type=int,
        default=None,
        help="which window to plot, counted from 0 (default: the most decisive one, i.e. "
        "the window giving the recording's verdict with the highest confidence)",
    )
    add_recording_args(parser)
    parser.set_defaults(handler=run)


BATCH = 64


def run(args: argparse.Namespace) -> int:
    feedback = Feedback.from_args(args)
    if args.plot is not None:
        try:
            require_matplotlib()
        except PlotUnavailableError as exc:
            print(f"faultline: {exc}", file=sys.stderr)
            return 2
    settings = settings_or_exit(args.config)
    try:
        recording = recording_from_args(args.path, args)
    except RecordingError as exc:
        print(f"faultline: {exc}", file=sys.stderr)
        return 2
    encoder = encoder_from_settings(settings)
    root = default_library_root(settings) if args.library is None else args.library
    library = load_or_build_library(root, encoder, progress=not feedback.quiet)
    window_s = args.window or settings.encoder.window_s
    windows = list(iter_windows(recording, args.asset or "offline", window_s=window_s))
    if not windows:
        print(f"faultline: {args.path} is shorter than one {window_s} s window", file=sys.stderr)
        return 2
    if args.plot_window is not None and not 0 <= args.plot_window < len(windows):
        print(
            f"faultline: --plot-window {args.plot_window}: the recording has windows "
            f"0 to {len(windows) - 1}",
            file=sys.stderr,
        )
        return 2
    policy = policy_from_settings(settings)
    results: list[WindowResult] = []
    with feedback.progress_bar("diagnose", total=len(windows), unit="window") as bar:
        for start in range(0, len(windows), BATCH):
            batch = windows[start : start + BATCH]
            results += diagnose_batch(batch, encoder, library, policy)
            bar.update(len(batch))
    verdicts = [r.verdict for r in results]
    overall = aggregate(verdicts)
    rpm, rpm_source = results[0].rpm, results[0].rpm_source
    if rpm_source == "message":  # offline, the speed came from the command line or the file
        rpm_source = "argument" if args.rpm is not None else "recording"
    report: dict[str, object] = {
        "source": str(args.path),
        "fs": recording.fs,
        "duration_s": round(recording.duration_s, 3),
        "rpm": round(rpm, 1),
        "rpm_source": rpm_source,
        "bearing": (recording.geometry or encoder.default_geometry).name,
        "windows": len(windows),
        "library_version": library.version,
        "verdict": {
            "label": overall.label,
            "confidence": round(overall.confidence, 4),
            "reason": overall.reason,
            "evidence": overall.evidence,
        },
        "window_labels": dict(Counter(v.label for v in verdicts).most_common()),
    }
    if args.per_window:
        report["per_window"] = [
            {
                "offset_s": w.meta.get("offset_s"),
                "label": r.verdict.label,
                "confidence": round(r.verdict.confidence, 4),
                "reason": r.verdict.reason,
                "code": r.verdict.code,
                "evidence": r.verdict.evidence,
                "neighbours": [
                    {"id": n.id, "label": n.label, "score": round(n.score, 4)}
                    for n in r.neighbours[:3]
                ],
            }
            for w, r in zip(windows, results, strict=True)
        ]
    if args.plot is not None:
        index = decisive_window(results, overall.label)
        if args.plot_window is not None:
            index = args.plot_window
        report["plot"] = plot_window(args, windows, results, index, report, library, encoder)
    if feedback.human:
        print_report(report)
    feedback.result(report, "" if feedback.human else quiet_line(report))
    return 0


def plot_window(
    args: argparse.Namespace,
    windows: list[Window],
    results: list[WindowResult],
    index: int,
    report: dict[str, Any],
    library: FaultLibrary,
    encoder: Any,
) -> dict[str, Any]:
    """Draw window ``index``; what the report says about the picture."""
    window, result = windows[index], results[index]
    described = {r["id"]: r for r in library.describe([n.id for n in result.neighbours[:5]])}
    keep = ("record_id", "offset_s", "fault_size_in", "load_hp", "asset", "dataset")
    neighbours = [
        {
            "id": n.id,
            "label": n.label,
            "score": n.score,
            **{k: described.get(n.id, {}).get(k) for k in keep},
        }
        for n in result.neighbours[:5]
    ]
    if result.rpm_source == "message":  # as in the report: the file's or the argument's
        result = replace(result, rpm_source=str(report["rpm_source"]))
    geometry = window.geometry or encoder.default_geometry
    drawn = write_plot(
        args.plot,
        window,
        result,
        geometry,
        title=f"{Path(args.path).name}: window {index} of {len(windows)}, "
        f"{result.verdict.label} ({result.verdict.confidence:.2f})",
        overall=report["verdict"],
        neighbours=neighbours,
    )
    return {
        "path": str(Path(args.plot).resolve()),
        "window": index,
        "offset_s": window.meta.get("offset_s"),
        "chosen": "--plot-window" if args.plot_window is not None else "most decisive",
        "window_label": result.verdict.label,
        "window_confidence": round(result.verdict.confidence, 4),
        "rpm": round(result.rpm, 1),
        "band": {k: round(v, 2) for k, v in drawn["band"].items()},
    }


def quiet_line(report: dict[str, Any]) -> str:
    """The one line ``--quiet`` prints: file, label, confidence."""
    verdict = report["verdict"]
    return f"{report['source']}: {verdict['label']} {verdict['confidence']:.2f}"


def print_report(report: dict[str, Any]) -> None:
    verdict = report["verdict"]
    print(f"{report['source']}: {verdict['label']} (confidence {verdict['confidence']:.2f})")
    if verdict["reason"]:
        print(f"  reason: {verdict['reason']}")
    if verdict["evidence"]:
        print(f"  lines: {verdict['evidence']}")
    print(
        f"  {report['windows']} windows, fs {report['fs']:g} Hz, rpm {report['rpm']} "
        f"({report['rpm_source']}), bearing {report['bearing']}"
    )
    print(f"  window labels: {report['window_labels']}")
    for row in report.get("per_window", []):
        print(f"  {row['offset_s']:7.2f}s  {row['label']:<10} {row['confidence']:.2f}")
    plot = report.get("plot")
    if plot:
        print(
            f"  plot: {plot['path']} (window {plot['window']} at {plot['offset_s']} s, "
            f"{plot['chosen']}: {plot['window_label']} {plot['window_confidence']:.2f})"
        )
