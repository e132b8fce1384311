"""``faultline diagnose PATH``: diagnose a recording offline, no broker needed."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

from faultline.agent.app import default_library_root, encoder_from_settings, policy_from_settings
from faultline.agent.commands.recording_args import add_recording_args, recording_from_args
from faultline.agent.commands.run import settings_or_exit
from faultline.agent.library_setup import load_or_build_library
from faultline.fault_library.diagnosis import diagnose_batch
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
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--per-window", action="store_true", help="include every window's verdict")
    parser.add_argument("--config", "-c", default=None, help="YAML configuration file")
    parser.add_argument("--library", default=None, help="fault library root (default: config's)")
    parser.add_argument("--window", type=float, default=None, help="window length in s")
    parser.add_argument(
        "--asset", default=None, help="judge against this enrolled asset's own healthy baseline"
    )
    add_recording_args(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_or_exit(args.config)
    try:
        recording = recording_from_args(args.path, args)
    except RecordingError as exc:
        print(f"faultline: {exc}", file=sys.stderr)
        return 2
    encoder = encoder_from_settings(settings)
    root = default_library_root(settings) if args.library is None else args.library
    library = load_or_build_library(root, encoder, progress=not args.json)
    window_s = args.window or settings.encoder.window_s
    windows = list(iter_windows(recording, args.asset or "offline", window_s=window_s))
    if not windows:
        print(f"faultline: {args.path} is shorter than one {window_s} s window", file=sys.stderr)
        return 2
    policy = policy_from_settings(settings)
    results = []
    for start in range(0, len(windows), 64):
        results += diagnose_batch(windows[start : start + 64], encoder, library, policy)
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
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


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
