"""``faultline check-config FILE``: validate a configuration without starting anything."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from faultline.agent.commands.feedback import Feedback, add_feedback_args
from faultline.agent.settings import check_config


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "check-config",
        help="validate a YAML config (and FAULTLINE__* environment overrides)",
        description=(
            "Validate a configuration file merged over config/default.yaml and the "
            "FAULTLINE__SECTION__KEY environment overrides. Each problem names the key, the "
            "expected form and the YAML line. Exits 0 when valid, 2 otherwise. --json prints "
            "{file, ok, problems: [{key, expected, given, source, message}], and when valid "
            "broker, topics, assets, library, environment_overrides}; --quiet prints nothing "
            "when valid and only the problems (stderr) when not."
        ),
    )
    parser.add_argument("file", help="YAML configuration file to check")
    add_feedback_args(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    checked = check_config(args.file)
    feedback = Feedback.from_args(args)
    if checked.ok or feedback.json:
        feedback.result(checked.as_json(), "" if feedback.quiet else checked.text)
    else:  # the problems are errors: said on stderr, even with --quiet
        print(checked.text, file=sys.stderr)
    return 0 if checked.ok else 2
