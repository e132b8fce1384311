"""``faultline run``: the production agent (what the balena container starts)."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from typing import Any

from faultline.agent.app import (
    Agent,
    default_library_root,
    encoder_from_settings,
    install_stop_signals,
)
from faultline.agent.library_setup import load_or_build_library
from faultline.agent.settings import ConfigError, Settings, load_settings
from faultline.agent.supervisor import Supervisor, child_argv


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "run",
        help="run the agent against the configured MQTT broker",
        description=(
            "Run the agent: subscribe to the configured sensor topics, answer each window "
            "with an alert, publish rejections on the errors topic and a retained status. "
            "Stops cleanly on SIGTERM/SIGINT. Config: --config FILE or FAULTLINE_CONFIG, "
            "overridden by FAULTLINE__SECTION__KEY environment variables."
        ),
    )
    parser.add_argument("--config", "-c", default=None, help="YAML configuration file")
    parser.add_argument(
        "--processes",
        "-p",
        type=int,
        default=None,
        metavar="N",
        help=(
            "run N agent processes sharing the sensor stream through one MQTT shared "
            "subscription (default: pipeline.processes, 1)"
        ),
    )
    parser.set_defaults(handler=run)


def settings_or_exit(path: str | None) -> Settings:
    """Load settings; on a bad config print every problem and exit 2 (shared by verbs)."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"faultline: invalid configuration:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args: argparse.Namespace) -> int:
    settings = settings_or_exit(args.config)
    logging.getLogger().setLevel(args.log_level or settings.log_level)
    # Handle SIGTERM from the very start: balena may stop us during a library build.
    stop = threading.Event()
    install_stop_signals(stop)
    encoder = encoder_from_settings(settings)
    root = default_library_root(settings)
    library = load_or_build_library(
        root, encoder, rebuild=settings.library.rebuild, shards=settings.library.shards
    )
    processes = settings.pipeline.processes if args.processes is None else args.processes
    if processes < 1:
        print("faultline: --processes must be at least 1", file=sys.stderr)
        return 2
    if stop.is_set():
        return 0
    if processes == 1:
        Agent(settings, library, encoder, library_root=root).run_forever(stop)
        return 0
    # The library is built (or checked) once, above; each process opens that folder.
    library.close()
    supervisor = Supervisor(settings, processes, argv=child_argv(args.config, args.log_level))
    return supervisor.run(stop)
