"""``faultline eval [DIR]``: leakage-safe evaluation on a labelled folder with a manifest.

The command line, the ablation table and the printing; reading the folder and running the
splits is :mod:`faultline.agent.commands.eval_runs`, splits and metrics are
:mod:`faultline.fault_library.evaluation`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.contrib import DummyTqdmFile

from faultline.agent.commands.eval_runs import (
    ENVELOPE_PREFIXES,
    ORDER_ENVELOPE_PREFIXES,
    SPLITS,
    TRANSFER_SPLITS,
    Config,
    Dataset,
    Embedder,
    folds_of,
    load_dataset,
    manifest_size,
    run_split,
    run_transfer,
)
from faultline.agent.commands.feedback import Feedback, json_default
from faultline.fault_library.recordings import RecordingError
from faultline.fault_library.verdict import UNKNOWN


def default_machine_dir() -> Path | None:
    env = os.environ.get("FAULTLINE_UESTC_DIR")
    path = Path(env) if env else default_data_dir().parent / "uestc"
    return path if (path / "manifest.csv").is_file() else None


def default_data_dir() -> Path:
    env = os.environ.get("FAULTLINE_CWRU_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cwru"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "eval",
        help="evaluate diagnosis on a labelled folder (CWRU by default)",
        description=(
            "Leakage-safe evaluation: leave-one-fault-size-out, leave-one-load-out, "
            "cross-rate (with resampled copies) and held-out class. Prints per-class "
            "recall, balanced accuracy, confusion, unknown rate, reliability and the misses "
            "per recording, then a one-screen summary; --json prints everything as one JSON "
            "object (--json FILE writes it to FILE). Progress goes to stderr."
        ),
    )
    parser.add_argument(
        "data_dir",
        nargs="?",
        type=Path,
        default=None,
        help="folder with manifest.csv (default: $FAULTLINE_CWRU_DIR or ../shared/data/cwru)",
    )
    parser.add_argument("--split", choices=[*SPLITS, *TRANSFER_SPLITS, "all"], default="all")
    parser.add_argument(
        "--machine",
        type=Path,
        default=None,
        help="another machine's labelled folder for the 'machine' split (library: DATA_DIR "
        "only); default: $FAULTLINE_UESTC_DIR or ../shared/data/uestc when present",
    )
    parser.add_argument(
        "--machine-bearing",
        default="UC204",
        help="bearing preset of the other machine's recordings (default UC204)",
    )
    parser.add_argument(
        "--sensors",
        default="FE,BA",
        help="channels tested by the 'sensor' split against a DE library (default FE,BA)",
    )
    parser.add_argument(
        "--json",
        dest="json_out",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="print one JSON object on stdout instead of the text report, or with FILE write "
        "it there (give DATA_DIR before --json, or it is taken for FILE)",
    )
    parser.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="for scripts: no progress, no report, only errors and one result line",
    )
    parser.add_argument(
        "--projection",
        choices=("trained", "none"),
        default="trained",
        help="retrain the projection inside each fold, or use v1 features",
    )
    parser.add_argument(
        "--no-envelope", action="store_true", help="drop the Hilbert-envelope shaft-order features"
    )
    parser.add_argument("--view", choices=("window", "spectrum"), default="window")
    parser.add_argument(
        "--no-lines",
        action="store_true",
        help="retrieval alone: skip the cross-check with the characteristic lines",
    )
    parser.add_argument(
        "--lines-shift",
        type=float,
        default=0.0,
        metavar="DB",
        help="move every line threshold by DB (how sensitive the results are to them)",
    )
    parser.add_argument(
        "--no-calibration",
        action="store_true",
        help="plain kNN vote (no novelty thresholds, raw vote share)",
    )
    parser.add_argument("--k", type=int, default=10, help="neighbours per window")
    parser.add_argument(
        "--quantile",
        type=float,
        default=0.05,
        help="novelty threshold: this quantile of held-out in-class similarity",
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="also run LOFSO and held-out class without envelope features "
        "and with/without the projection, and print the table",
    )
    parser.add_argument("--window", type=float, default=1.0, help="window length, s")
    parser.add_argument("--hop", type=float, default=0.5, help="hop between windows, s")
    parser.add_argument(
        "--estimate-rpm",
        action="store_true",
        help="ignore the manifest's speed: estimate it from each window, as for an asset "
        "with no rpm configured",
    )
    parser.set_defaults(handler=run)


ABLATION_LINE_SHIFTS_DB = (-2.0, +2.0)
"""Line thresholds moved by these amounts in the ablation: how knife-edged they are."""

# --- printing ---------------------------------------------------------------------------------

SHORT = {
    "normal": "normal",
    "inner_race": "inner",
    "outer_race": "outer",
    "ball": "ball",
    UNKNOWN: "unknown",
}


def print_fold(s: dict[str, Any]) -> None:
    print(
        f"\n[{s['split']}] fold {s['fold']}: library {s['library_windows']} windows, "
        f"test {s['test_windows']} windows"
    )
    for note in s["notes"]:
        print(f"  note: {note}")
    recall = "  ".join(f"{SHORT[c]} {r:.2f}" for c, r in s["recall"].items())
    ba = s["balanced_accuracy"]
    print(f"  balanced accuracy {ba:.3f}   unknown {s['unknown_rate']:.1%}   recall: {recall}")
    base = s.get("baseline")
    if base:
        brecall = "  ".join(f"{SHORT[c]} {r:.2f}" for c, r in base["recall"].items())
        print(f"  envelope baseline {base['balanced_accuracy']:.3f}   recall: {brecall}")
    ret = s.get("retrieval")
    if ret:
        print(
            f"  retrieval alone: top neighbour right for {ret['top1_fault']:.1%} of fault "
            f"windows; best cosine median {ret['best_cosine_fault_median']:.3f} "
            f"(p05 {ret['best_cosine_fault_p05']:.3f}; {ret['fault_above_min_similarity']:.1%} "
            "above min_similarity)"
        )
    codes = ", ".join(f"{k} {v}" for k, v in s.get("codes", {}).items())
    if codes:
        print(f"  decided by: {codes}")
    conf = s["confusion"]
    print("  confusion (rows: truth; cols: " + " ".join(SHORT[c] for c in conf["cols"]) + ")")
    for row, counts in zip(conf["rows"], conf["counts"], strict=True):
        if sum(counts):
            print(f"    {SHORT[row]:>7} " + " ".join(f"{n:>5}" for n in counts))
    rel = s["reliability"]
    if rel["n"]:
        print(
            f"  reliability: ECE {rel['ece']:.3f} over {rel['n']} classified windows"
            + (
                f" (raw vote share: ECE {s['reliability_raw_share']['ece']:.3f})"
                if s.get("reliability_raw_share")
                else ""
            )
        )
    for record, d in s["records"].items():
        if not d["wrong"]:
            continue
        wrong = ", ".join(f"{SHORT.get(k, k)} {v}" for k, v in d["wrong"].items())
        print(
            f"  miss {record:>18} ({SHORT[d['truth']]}): {sum(d['wrong'].values())}/"
            f"{d['windows']} windows -> {wrong}; recording verdict: {d['verdict']}"
        )


def print_split_summary(split: str, out: dict[str, Any]) -> None:
    s = out["summary"]
    if split != "held-out-class":
        folds = " ".join(f"{f['fold']}={f['balanced_accuracy']:.3f}" for f in out["folds"])
        base = [f["baseline"]["balanced_accuracy"] for f in out["folds"] if f.get("baseline")]
        if base:
            folds += f"; envelope baseline mean {float(np.mean(base)):.3f}"
        raw = (s.get("reliability_raw_share") or {}).get("ece", math.nan)
        print(
            f"\n== {split}: mean balanced accuracy {s['mean_balanced_accuracy']:.3f} "
            f"(min {s['min_balanced_accuracy']:.3f}; {folds}); unknown {s['unknown_rate']:.1%}; "
            f"ECE {s['reliability']['ece']:.3f} (vote share at T=0.05: {raw:.3f})"
        )
    else:
        print(f"\n== {split}: share of the held-out class's windows answered unknown")
    if "unknown_share" in s:
        for cls, share in s["unknown_share"].items():
            print(f"   held out {cls}: {share:.1%} unknown; otherwise {s['called_otherwise'][cls]}")
    inv = out.get("rate_invariance")
    if inv:
        print(
            f"   rate invariance: {inv['same_answer']}/{inv['recordings']} recordings same "
            f"answer at 12/48/96 kHz (48 kHz records: native vs 12 kHz); window "
            f"agreement {inv['window_agreement']:.1%}"
        )
        for r in inv["rows"]:
            if not r["same_answer"]:
                print(f"     differs: {r['record']} ({r['fold']}): {r['answers']}")


# --- entry ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _report_stream(feedback: Feedback) -> Iterator[None]:
    """The text report's prints: to stdout through tqdm (a bar on stderr stays whole), or
    nowhere with --quiet or a JSON object on stdout."""
    sink: Any = DummyTqdmFile(sys.stdout) if feedback.human else io.StringIO()
    with contextlib.redirect_stdout(sink):
        yield


def run(args: argparse.Namespace) -> int:
    to_stdout = args.json_out == "-"
    feedback = Feedback(quiet=args.quiet, json=to_stdout)
    try:
        with _report_stream(feedback):
            report = evaluate(args, feedback)
    except (RecordingError, OSError) as exc:
        print(f"faultline: {exc}", file=sys.stderr)
        return 2
    if feedback.human:
        print_summary(report)
    if args.json_out and not to_stdout:
        Path(args.json_out).write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
        if not args.quiet:
            print(f"wrote {args.json_out}")
    if to_stdout:
        sys.stdout.write(json.dumps(report, indent=2, default=_jsonable) + "\n")
    elif args.quiet:
        print(summary_line(report))
    return 0


def evaluate(args: argparse.Namespace, feedback: Feedback) -> dict[str, Any]:
    """Every split asked for; the report (printing along the way to the current stdout)."""
    data_dir = args.data_dir or default_data_dir()
    started = time.perf_counter()
    with feedback.progress_bar("read recordings", total=manifest_size(data_dir), unit="rec") as bar:
        data = load_dataset(
            data_dir,
            window_s=args.window,
            hop_s=args.hop,
            estimate_rpm=args.estimate_rpm,
            tick=bar.update,
        )
    drop = ENVELOPE_PREFIXES if args.no_envelope else ()
    config = Config(
        args.view, args.projection, drop, lines=not args.no_lines, lines_shift_db=args.lines_shift
    )
    print(
        f"{len(data.info)} windows from {len(data.recordings)} recordings in {data_dir}; "
        f"base rate {data.base_fs:g} Hz; {config.name}; k={args.k}; "
        f"{'no calibration' if args.no_calibration else f'novelty quantile {args.quantile:g}'}"
    )
    splits = SPLITS if args.split == "all" else (args.split,)
    with feedback.progress_bar(
        f"encode {config.view}s", total=len(data.windows), unit="window"
    ) as bar:
        data.features(config.view, tick=bar.update)
    embedder = Embedder(data, config)
    report: dict[str, Any] = {
        "data_dir": str(data_dir),
        "config": {
            "name": config.name,
            "view": args.view,
            "projection": args.projection,
            "dropped_features": list(drop),
            "k": args.k,
            "quantile": args.quantile,
            "calibrated": not args.no_calibration,
            "line_check": not args.no_lines,
            "rpm": "estimated" if args.estimate_rpm else "manifest",
            "lines_shift_db": args.lines_shift,
            "window_s": args.window,
            "hop_s": args.hop,
            "model_id": data.encoder.model_id,
        },
        "splits": {},
    }
    for split in splits:
        if split in TRANSFER_SPLITS:
            continue
        with feedback.progress_bar(split, total=len(folds_of(split, data)), unit="fold") as bar:
            report["splits"][split] = run_split(
                split, data, embedder, args, on_fold=_counted(print_fold, bar)
            )
        print_split_summary(split, report["splits"][split])
    for split in TRANSFER_SPLITS if args.split == "all" else splits:
        if split not in TRANSFER_SPLITS:
            continue
        tests = transfer_tests(split, data_dir, args)
        if not tests:
            print(f"\n== {split}: skipped (no data: see --machine)")
            report.setdefault("skipped", []).append(split)
            continue
        with feedback.progress_bar(split, total=len(tests), unit="fold") as bar:
            report["splits"][split] = run_transfer(
                data, tests, config, args, on_fold=_counted(print_fold, bar)
            )
        print_split_summary(split, report["splits"][split])
    if args.ablation:
        report["ablation"] = ablation(data, args, {config: embedder})
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["projection_training_seconds"] = round(embedder.train_seconds, 1)
    return report


def _counted(show: Callable[[dict[str, Any]], None], bar: Any) -> Callable[[dict[str, Any]], None]:
    def on_fold(summary: dict[str, Any]) -> None:
        show(summary)
        bar.update(1)

    return on_fold


def print_summary(report: dict[str, Any]) -> None:
    """The one screen to read after a long run: each split's headline figures."""
    print(f"\n{'=' * 78}\nsummary: {report['config']['name']} on {report['data_dir']}")
    print(f"  {'split':<16} {'folds':>5} {'mean BA':>8} {'min BA':>8} {'unknown':>8} {'ECE':>6}")
    for split, out in report["splits"].items():
        s = out["summary"]
        if "mean_balanced_accuracy" in s:
            print(
                f"  {split:<16} {len(out['folds']):>5} {s['mean_balanced_accuracy']:>8.3f} "
                f"{s['min_balanced_accuracy']:>8.3f} {s['unknown_rate']:>8.1%} "
                f"{s['reliability']['ece']:>6.3f}"
            )
        if "unknown_share" in s:
            shares = ", ".join(f"{SHORT.get(c, c)} {v:.0%}" for c, v in s["unknown_share"].items())
            print(
                f"  {split:<16} {len(out['folds']):>5}  held-out class answered unknown: {shares}"
            )
    for split in report.get("skipped", []):
        print(f"  {split:<16} skipped (no data)")
    print(
        f"done in {report['seconds']} s "
        f"(projection training {report['projection_training_seconds']:.0f} s)"
    )


def summary_line(report: dict[str, Any]) -> str:
    """``--quiet``'s one line: each split's mean balanced accuracy and the time taken."""
    parts = [
        f"{split} {out['summary']['mean_balanced_accuracy']:.3f}"
        for split, out in report["splits"].items()
        if "mean_balanced_accuracy" in out["summary"]
    ]
    return f"eval: {', '.join(parts) or 'no balanced accuracy'} ({report['seconds']} s)"


def transfer_tests(
    split: str, data_dir: Path, args: argparse.Namespace
) -> list[tuple[str, Dataset, bool]]:
    """The test datasets of a transfer split: ``(name, dataset, healthy second half only)``."""
    view = args.view
    out = []
    if split == "sensor":
        for channel in (c.strip() for c in args.sensors.split(",") if c.strip()):
            test = load_dataset(
                data_dir,
                window_s=args.window,
                hop_s=args.hop,
                estimate_rpm=args.estimate_rpm,
                channel=channel,
            )
            test.features(view)
            out.append((f"{channel} sensor", test, True))
    elif split == "machine":
        machine = args.machine or default_machine_dir()
        if machine is None:
            return []
        test = load_dataset(
            machine,
            window_s=args.window,
            hop_s=args.hop,
            estimate_rpm=args.estimate_rpm,
            channel="Data",
            bearing=args.machine_bearing,
        )
        test.features(view)
        out.append((machine.name, test, False))
    return out


def ablation(
    data: Dataset, args: argparse.Namespace, done: dict[Config, Embedder]
) -> list[dict[str, Any]]:
    """Each feature set with and without the line check, then the line thresholds moved.

    Variants of one feature set share its trained projections (the line check does not
    change them), so the table costs one training per feature set and fold.
    """
    rows = []
    print("\n== ablation (LOFSO mean balanced accuracy, held-out class unknown share)")
    configs: list[Config] = []
    for projection in ("none", "trained"):
        for drop in ((), ENVELOPE_PREFIXES, ORDER_ENVELOPE_PREFIXES):
            configs += [Config(args.view, projection, drop, lines) for lines in (True, False)]
    configs += [Config(args.view, "trained", (), True, shift) for shift in ABLATION_LINE_SHIFTS_DB]
    for config in configs:
        base = Config(config.view, config.projection, config.drop)
        if base not in done:
            done[base] = Embedder(data, base)
        embedder = done.get(config) or done[base].variant(config)
        lofso = run_split("lofso", data, embedder, args)
        held = run_split("held-out-class", data, embedder, args)
        row = {
            "config": config.name,
            "lofso_folds": [f["balanced_accuracy"] for f in lofso["folds"]],
            "lofso_mean": lofso["summary"]["mean_balanced_accuracy"],
            "lofso_unknown": lofso["summary"]["unknown_rate"],
            "held_out_unknown": held["summary"]["unknown_share"],
        }
        rows.append(row)
        folds = " ".join(f"{x:.3f}" for x in row["lofso_folds"])
        unk = " ".join(f"{SHORT[c]} {v:.0%}" for c, v in row["held_out_unknown"].items())
        print(
            f"  {config.name:<72} LOFSO {row['lofso_mean']:.3f} [{folds}] "
            f"unknown {row['lofso_unknown']:.1%} | held-out unknown: {unk}"
        )
    return rows


def _jsonable(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    return json_default(value)
