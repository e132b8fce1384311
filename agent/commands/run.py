"""``faultline run``: the production agent (what the balena container starts)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from importlib.resources import files
from pathlib import Path
from typing import Any

from faultline.agent.app import (
    Agent,
    default_library_root,
    encoder_from_settings,
    install_stop_signals,
)
from faultline.agent.health import (
    HEALTH_FILE,
    Beacon,
    config_error_fields,
    health_path,
)
from faultline.agent.library_setup import load_or_build_library
from faultline.agent.memory_budget import check as check_memory
from faultline.agent.memory_budget import resident_mb, worst_case
from faultline.agent.settings import ConfigError, Settings, load_settings
from faultline.agent.supervisor import Supervisor, child_argv, process_env
from faultline.fault_library.library import LibraryError
from faultline.fault_library.signing import SignatureError, Trust, verify_file

log = logging.getLogger(__name__)
ON_CONFIG_ERROR_ENV = "FAULTLINE_ON_CONFIG_ERROR"


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
    parser.add_argument(
        "--on-config-error",
        choices=["exit", "wait"],
        default=os.environ.get(ON_CONFIG_ERROR_ENV, "exit"),
        help=(
            "exit: print the problems and exit 2 (default); wait: log them, report "
            "'config error' to `faultline health` and wait for SIGTERM instead of exiting, "
            "so a container does not crash-loop on a bad device variable (the balena "
            f"image's choice). Default from ${ON_CONFIG_ERROR_ENV}"
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
    # Handle SIGTERM from the very start: balena may stop us during a library build, or
    # while we wait on a configuration error.
    stop = threading.Event()
    install_stop_signals(stop)
    loaded: Settings | None = None
    try:
        settings = loaded = load_settings(args.config)
        logging.getLogger().setLevel(args.log_level or settings.log_level)
        encoder = encoder_from_settings(settings)
    except ConfigError as exc:
        if args.on_config_error != "wait":
            raise  # the CLI prints every problem and exits 2
        # Where `faultline health` looks: it loads the same settings (or fails alike).
        return wait_on_config_error(exc, stop, health_path(loaded))
    try:
        trust = settings.library.trust()
        if settings.library.require_signed_models:
            check_model_manifests(settings.library.trust(require=True))
    except SignatureError as exc:
        print(f"faultline: refusing to start: {exc}", file=sys.stderr)
        return 1
    starting = Beacon(
        health_path(settings),
        lambda: {"state": "starting", "reason": "starting: opening (or building) the library"},
    ).start()
    try:
        root = default_library_root(settings)
        library = load_or_build_library(
            root,
            encoder,
            rebuild=settings.library.rebuild,
            shards=settings.library.shards,
            trust=trust,
        )
    except LibraryError as exc:
        print(f"faultline: no library to serve: {exc}", file=sys.stderr)
        return 1
    finally:
        starting.stop()
    try:
        # The worst case this configuration allows, with the models and library loaded.
        check_memory(settings, worst_case(settings, resident_mb()))
    except ConfigError as exc:
        library.close()
        if args.on_config_error != "wait":
            raise
        return wait_on_config_error(exc, stop, health_path(settings))
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
    members = [
        str(Path(process_env(settings, i, supervisor.group)["FAULTLINE__DATA_DIR"]) / HEALTH_FILE)
        for i in range(processes)
    ]
    beacon = Beacon(
        health_path(settings),
        lambda: {"state": "supervising", "reason": f"{processes} processes", "members": members},
    ).start()
    try:
        return supervisor.run(stop)
    finally:
        beacon.stop()


def wait_on_config_error(error: ConfigError, stop: threading.Event, path: Path) -> int:
    """Log the problems, say "config error" in the health file, wait for SIGTERM.

    On balena a changed device variable restarts the service with the new value, so
    waiting is the right thing to do: a crash loop would only bury the message that names
    the key under restarts. Returns 0 (stopped as asked).
    """
    log.error(
        "invalid configuration; fix the device variable or file named below (waiting, not "
        "exiting: --on-config-error wait):\n%s",
        error,
    )
    beacon = Beacon(path, lambda: config_error_fields(error)).start()
    try:
        while not stop.wait(600.0):
            log.error("still waiting for a valid configuration:\n%s", error)
    finally:
        beacon.stop()
    return 0


def check_model_manifests(trust: Trust | None) -> None:
    """Every model manifest shipped in ``faultline.models`` must carry a ``.sig`` by a
    trusted key (``library.require_signed_models``); raises ``SignatureError`` naming it.
    Each manifest pins its model files by sha256, and the encoders check those pins."""
    if trust is None:
        return
    folder = Path(str(files("faultline.models")))
    for manifest in sorted(folder.glob("*.json")):
        try:
            signer = verify_file(manifest, trust)
        except SignatureError as exc:
            raise SignatureError(f"model manifest {manifest}: {exc}") from None
        log.info("model manifest %s signed by key %s", manifest.name, signer)
