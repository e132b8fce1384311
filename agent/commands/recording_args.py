"""Command-line options shared by verbs that read recordings (diagnose, simulate)."""

from __future__ import annotations

import argparse
from pathlib import Path

from faultline.encoders.geometry import BearingGeometry, bearing_preset
from faultline.fault_library.recordings import Recording, read_recording


def add_recording_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "recording overrides", "values that win over what the file says"
    )
    group.add_argument("--fs", type=float, default=None, help="sampling rate in Hz")
    group.add_argument("--rpm", type=float, default=None, help="shaft speed in rev/min")
    group.add_argument("--channel", default="DE", help="CWRU .mat channel (DE, FE, BA); default DE")
    group.add_argument(
        "--bearing", default=None, help="bearing preset, e.g. 6205 or 6203 (SKF deep-groove)"
    )
    group.add_argument("--n-balls", type=int, default=None, help="number of rolling elements")
    group.add_argument("--ball-diameter", type=float, default=None, help="rolling element diameter")
    group.add_argument("--pitch-diameter", type=float, default=None, help="pitch diameter")
    group.add_argument(
        "--contact-angle", type=float, default=0.0, help="contact angle in degrees (default 0)"
    )


def geometry_from_args(args: argparse.Namespace) -> BearingGeometry | None:
    """Explicit geometry wins over a preset; None leaves the file's (or the default)."""
    explicit = (args.n_balls, args.ball_diameter, args.pitch_diameter)
    if any(v is not None for v in explicit):
        if not all(v is not None for v in explicit):
            raise SystemExit(
                "faultline: --n-balls, --ball-diameter and --pitch-diameter go together"
            )
        return BearingGeometry(
            args.n_balls, args.ball_diameter, args.pitch_diameter, args.contact_angle
        )
    if args.bearing:
        try:
            return bearing_preset(args.bearing)
        except ValueError as exc:
            raise SystemExit(f"faultline: {exc}") from None
    return None


def recording_from_args(path: str | Path, args: argparse.Namespace) -> Recording:
    return read_recording(
        path, fs=args.fs, rpm=args.rpm, geometry=geometry_from_args(args), channel=args.channel
    )
