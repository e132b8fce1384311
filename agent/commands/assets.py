"""``faultline assets``: enrol an asset's own healthy baseline, list enrolled assets.

Healthy data is what a plant has most of and what public data sets lack (CWRU has one
5-second healthy recording). Enrolling an asset adds windows recorded while it is known
to be healthy to the library as ``normal`` signatures tagged with its id; from then on the
agent judges that asset's windows against its own baseline as well as the library.
Windows come from recording files (``--from``) or live from the broker (``--minutes``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import queue
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from faultline.agent.app import (
    default_library_root,
    encoder_from_settings,
    limits_from_settings,
    topics_from_settings,
    transport_from_settings,
)
from faultline.agent.commands.feedback import Feedback, add_feedback_args
from faultline.agent.commands.recording_args import (
    add_recording_args,
    geometry_from_args,
)
from faultline.agent.commands.run import settings_or_exit
from faultline.agent.settings import Settings
from faultline.agent.transport.mqtt import InboundMessage
from faultline.agent.transport.payloads import PayloadError, decode_window
from faultline.encoders.signals import Window
from faultline.fault_library.builder import LibraryBuildError, SignatureSource
from faultline.fault_library.library import LibraryError, open_current
from faultline.fault_library.store import VIEWS
from faultline.fault_library.updates import DerivedVersion, add_recording, add_windows


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "assets",
        help="enrol an asset's healthy baseline; list enrolled assets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="assets_command", metavar="SUBCOMMAND", required=True)
    enroll = verbs.add_parser(
        "enroll",
        help="add an asset's healthy windows to the library as its own baseline",
        description=(
            "Add windows recorded while ASSET is healthy to the library as 'normal' "
            "signatures tagged with its id, and publish a new library version (a running "
            "agent swaps to it). Give recording files with --from, or collect live windows "
            "from the asset's sensor topic for --minutes. At least 3 windows are needed."
        ),
    )
    enroll.add_argument("asset", help="asset id, as it appears in the sensor topic")
    source = enroll.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="files", nargs="+", help="healthy recording file(s)")
    source.add_argument(
        "--minutes", type=float, help="collect this many minutes of live windows from the broker"
    )
    enroll.add_argument("--start", type=float, default=0.0, help="file: first second to use")
    enroll.add_argument("--stop", type=float, default=None, help="file: last second to use")
    enroll.add_argument("--hop", type=float, default=0.5, help="file: window hop in s")
    enroll.add_argument("--note", default=None, help="words for the signatures' description")
    enroll.add_argument("--config", "-c", default=None, help="YAML configuration file")
    enroll.add_argument("--root", "--library", default=None, help="library root")
    add_recording_args(enroll)
    add_feedback_args(enroll)
    enroll.set_defaults(handler=run_enroll)
    listing = verbs.add_parser(
        "list",
        help="list enrolled assets",
        description="List the assets with an enrolled baseline in the current library version.",
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument("--config", "-c", default=None, help="YAML configuration file")
    listing.add_argument("--root", "--library", default=None, help="library root")
    listing.set_defaults(handler=run_list)


def _root(settings: Settings, args: argparse.Namespace) -> Path:
    return Path(args.root) if args.root else default_library_root(settings)


def run_enroll(args: argparse.Namespace) -> int:
    settings = settings_or_exit(args.config)
    root = _root(settings, args)
    encoder = encoder_from_settings(settings)
    feedback = Feedback.from_args(args)
    note = args.note or f"Healthy baseline of asset {args.asset}"
    results: list[DerivedVersion] = []
    started = time.perf_counter()
    try:
        if args.files:
            # One new version per file: each is encoded, then the library is rewritten.
            for path in feedback.bar(args.files, f"enrol {args.asset}", unit="file"):
                results.append(
                    add_recording(
                        root,
                        path,
                        encoder,
                        label="normal",
                        asset=args.asset,
                        note=note,
                        fs=args.fs,
                        rpm=args.rpm,
                        geometry=geometry_from_args(args),
                        channel=args.channel,
                        window_s=settings.encoder.window_s,
                        hop_s=args.hop,
                        start_s=args.start,
                        stop_s=args.stop,
                        progress=feedback.progress,
                    )
                )
        else:
            windows = collect_live_windows(
                settings, args.asset, args.minutes * 60.0, feedback=feedback
            )
            feedback.note(f"collected {len(windows)} windows of {args.asset}: enrolling them")
            results.append(
                enroll_windows(
                    root, encoder, args.asset, windows, note, settings, feedback.progress
                )
            )
    except (LibraryBuildError, LibraryError) as exc:
        print(f"faultline: {exc}; current version unchanged", file=sys.stderr)
        return 1
    with open_current(root, expected_model_id=encoder.model_id) as library:
        baseline = library.baseline("window", args.asset)
        count = len(baseline.vectors) if baseline else 0
        added = sum(r.added for r in results)
        payload = {
            "asset": args.asset,
            "version": library.version,
            "added": added,
            "baseline_windows": count,
            "threshold": round(baseline.threshold, 4) if baseline else None,
            "baseline_used": baseline is not None,
            "source": list(args.files) if args.files else f"live, {args.minutes:g} min",
            "seconds": round(time.perf_counter() - started, 1),
        }
        if feedback.human:
            print(
                f"enrolled {args.asset} in {payload['seconds']} s: {added} signatures added "
                f"({added // len(VIEWS)} windows x {len(VIEWS)} views) from "
                f"{len(results)} source(s)"
            )
            if baseline is None:
                print("  fewer than 3 baseline windows: the baseline is not used yet")
            else:
                print(
                    f"  baseline: {count} windows, similarity threshold "
                    f"{baseline.threshold:.3f} (closer = normal, further = unknown)"
                )
        feedback.result(
            payload,
            f"enrolled {args.asset}: {added} signatures added, "
            f"{count} baseline windows in library version {library.version}",
        )
    return 0


def enroll_windows(
    root: Path,
    encoder: Any,
    asset: str,
    windows: list[Window],
    note: str,
    settings: Settings,
    progress: bool = False,
) -> DerivedVersion:
    """Add live windows as the asset's baseline; their bytes name the source."""
    digest = hashlib.sha256()
    for window in windows:
        digest.update(window.samples.tobytes())
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(windows[0].ts))
    source = SignatureSource(
        record_id=f"{asset}-{stamp}",
        source=f"live windows of {asset}",
        source_sha256=digest.hexdigest(),
        label="normal",
        dataset=f"asset {asset}",
        note=note,
        asset=asset,
    )
    rpm = windows[0].rpm
    return add_windows(
        root,
        windows,
        encoder,
        source,
        rpm=rpm,
        window_s=settings.encoder.window_s,
        action={"source": "mqtt", "seconds": len(windows) * settings.encoder.window_s},
        progress=progress,
    )


def collect_live_windows(
    settings: Settings, asset: str, seconds: float, *, feedback: Feedback | None = None
) -> list[Window]:
    """Subscribe to the asset's window topic until ``seconds`` of windows have arrived."""
    feedback = feedback or Feedback(quiet=True)
    topics = topics_from_settings(settings)
    limits = limits_from_settings(settings)
    inbox: queue.Queue[InboundMessage] = queue.Queue(maxsize=1024)
    client_id = f"{topics.client_id}-enroll"
    transport = transport_from_settings(
        settings,
        client_id=client_id,
        status_topic=f"{topics.prefix}/status/{client_id}",
        status_online=lambda: {"role": "enrolment", "asset": asset},
        on_message=inbox.put,
    )
    topic = topics.window(asset)
    transport.subscribe([topic])
    transport.start()
    windows: list[Window] = []
    deadline = time.monotonic() + seconds * 3 + 30  # sensors may be slower than real time
    bar = feedback.progress_bar(f"collect {asset}", total=round(seconds, 1), unit="s")
    collected = 0.0
    try:
        while collected < seconds:
            if time.monotonic() > deadline:
                raise LibraryBuildError(
                    f"only {len(windows)} windows arrived on {topic} before giving up"
                )
            try:
                message = inbox.get(timeout=1.0)
            except queue.Empty:
                continue
            try:
                window = decode_window(asset, message.payload, limits)
            except PayloadError as exc:
                print(f"  skipped a window: {exc.code}: {exc.message}", file=sys.stderr)
                continue
            offset = window.ts - windows[0].ts if windows else 0.0
            windows.append(_with_offset(window, offset))
            length = len(window.samples) / window.fs
            collected += length
            bar.update(round(min(length, seconds - collected + length), 3))
    finally:
        bar.close()
        transport.stop()
    return windows


def _with_offset(window: Window, offset: float) -> Window:
    return replace(window, meta={**window.meta, "offset_s": round(offset, 6)})


def run_list(args: argparse.Namespace) -> int:
    settings = settings_or_exit(args.config)
    root = _root(settings, args)
    encoder = encoder_from_settings(settings)
    with open_current(root, expected_model_id=encoder.model_id) as library:
        rows = {
            asset: {
                "windows": len(b.vectors),
                "threshold": round(b.threshold, 4),
            }
            for asset, b in library.baselines("window").items()
        }
        if args.json:
            print(json.dumps({"version": library.version, "assets": rows}, indent=2))
        else:
            print(f"library version {library.version}: {len(rows)} enrolled assets")
            for asset, row in sorted(rows.items()):
                print(f"  {asset:<20} {row['windows']:>5} windows  threshold {row['threshold']}")
    return 0
