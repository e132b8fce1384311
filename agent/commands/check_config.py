"""``faultline check-config FILE``: validate a configuration without starting anything."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from faultline.agent.settings import check_config


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "check-config",
        help="validate a YAML config (and FAULTLINE__* environment overrides)",
        description=(
            "Validate a configuration file merged over config/default.yaml and the "
            "FAULTLINE__SECTION__KEY environment overrides. Each problem names the key, the "
            "expected form and the YAML line. Exits 0 when valid, 2 otherwise."
        ),
    )
    parser.add_argument("file", help="YAML configuration file to check")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    ok, text = check_config(args.file)
    print(text, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 2
