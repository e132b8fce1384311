"""``faultline`` command line: one verb per module under ``agent/commands``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from faultline.agent import __version__
from faultline.agent.commands import (
    assets,
    check_config,
    demo,
    diagnose,
    health,
    keys,
    library,
    run,
    simulate,
)
from faultline.agent.commands import eval as eval_command
from faultline.agent.settings import ConfigError

COMMANDS = (
    run, demo, simulate, diagnose, library, assets, eval_command, check_config, health, keys
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faultline",
        description=(
            "Faultline: on-device vibration diagnosis. Sensors publish vibration windows or "
            "spectra over MQTT; the agent answers each with an alert citing the nearest known "
            "fault signatures."
        ),
    )
    parser.add_argument("--version", action="version", version=f"faultline {__version__}")
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default: the config's log_level, INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The embedded amqtt broker and its state machine log every state change at INFO.
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, level)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # --quiet (verbs for scripts): errors only, unless a level is asked for explicitly.
    configure_logging(args.log_level or ("ERROR" if getattr(args, "quiet", False) else "INFO"))
    try:
        code: int = args.handler(args)
    except ConfigError as exc:  # found after loading, e.g. encoder settings vs shipped model
        print(f"faultline: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
