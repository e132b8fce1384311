"""``faultline health``: the running agent's own view of its health, for a HEALTHCHECK."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from faultline.agent.health import MAX_AGE_S, judge, locate


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "health",
        help="exit 0 if the local agent is healthy, 1 if not, with one line saying why",
        description=(
            "Read the health file the running agent rewrites every second "
            "(<data_dir>/health.json) and judge it: healthy while starting or serving; "
            "unhealthy on a configuration error, a broker unreachable for "
            "health.offline_after_s, windows queued and none finished for "
            "health.stuck_after_s, or a file older than --max-age (agent hung or gone). "
            "Finds the file the way `faultline run` with the same config and environment "
            "writes it. Used by the balena image's HEALTHCHECK."
        ),
    )
    parser.add_argument("--config", "-c", default=None, help="YAML configuration file")
    parser.add_argument("--file", default=None, help="health file to read (default: found)")
    parser.add_argument(
        "--max-age",
        type=float,
        default=MAX_AGE_S,
        help=f"seconds after which an unchanged file means a hung agent (default {MAX_AGE_S:g})",
    )
    out = parser.add_mutually_exclusive_group()
    out.add_argument(
        "--json",
        action="store_true",
        help='print {"healthy": ..., "reason": ..., "file": ...} (the exit code is the same)',
    )
    out.add_argument("--quiet", "-q", action="store_true", help="print nothing: the exit code")
    parser.set_defaults(handler=health)


def health(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else locate(args.config)
    verdict = judge(path, max_age_s=args.max_age)
    if args.json:
        body = {"healthy": verdict.healthy, "reason": verdict.reason, "file": str(path)}
        print(json.dumps(body))
    elif not args.quiet:
        print(verdict.reason)
    return 0 if verdict.healthy else 1
