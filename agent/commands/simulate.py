"""``faultline simulate``: replay recordings as sensor windows to the broker."""

from __future__ import annotations

import argparse
import logging
import threading
from pathlib import Path
from typing import Any

from faultline.agent.app import install_stop_signals, topics_from_settings, transport_from_settings
from faultline.agent.commands.recording_args import add_recording_args, recording_from_args
from faultline.agent.commands.run import settings_or_exit
from faultline.agent.simulator import SimulatedAsset, Simulator
from faultline.fault_library.recordings import RecordingError

log = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "simulate",
        help="replay recordings as sensor windows on MQTT",
        description=(
            "Replay recordings (.mat CWRU, .npz, .wav, .csv) as windows on the sensor topics, "
            "one asset per file, interleaved, in real time or faster. Topics come from the "
            "config's first window (or spectrum) filter with the asset in place of '+'."
        ),
    )
    parser.add_argument("files", nargs="+", help="recordings to replay")
    parser.add_argument(
        "--asset",
        action="append",
        default=None,
        help="asset id per file, in order (default: the file name without extension)",
    )
    parser.add_argument("--config", "-c", default=None, help="YAML configuration file")
    parser.add_argument(
        "--speed", type=float, default=1.0, help="replay speed: 1 real time, 10 faster, 0 flat out"
    )
    parser.add_argument(
        "--format",
        choices=["json", "binary", "spectrum"],
        default="json",
        help="json windows, compact binary float32 windows, or sensor-side magnitude spectra",
    )
    parser.add_argument("--window", type=float, default=None, help="window length in s")
    parser.add_argument("--once", action="store_true", help="stop at the end instead of looping")
    parser.add_argument("--max-windows", type=int, default=None, help="stop after N windows")
    add_recording_args(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_or_exit(args.config)
    names = args.asset or []
    if len(names) > len(args.files):
        raise SystemExit("faultline: more --asset names than files")
    assets = []
    for i, path in enumerate(args.files):
        try:
            recording = recording_from_args(path, args)
        except RecordingError as exc:
            raise SystemExit(f"faultline: {exc}") from None
        name = names[i] if i < len(names) else Path(path).stem
        assets.append(SimulatedAsset(asset=name, recording=recording))
    topics = topics_from_settings(settings)
    client_id = f"{topics.client_id}-sim"
    transport = transport_from_settings(
        settings,
        client_id=client_id,
        status_topic=f"{settings.topics.prefix}/status/{client_id}",
        status_online=lambda: {"role": "simulator", "assets": [a.asset for a in assets]},
        on_message=lambda _m: None,
    )
    stop = threading.Event()
    install_stop_signals(stop)
    transport.start()
    if not transport.wait_connected(10.0):
        log.warning(
            "broker %s:%d not reachable yet; windows queue until it is",
            settings.mqtt.host,
            settings.mqtt.port,
        )
    simulator = Simulator(
        lambda topic, payload: transport.publish(topic, payload, qos=1),
        topics,
        assets,
        window_s=args.window or settings.encoder.window_s,
        speed=args.speed,
        fmt=args.format,
        loop=not args.once,
    )
    try:
        sent = simulator.run(stop, max_windows=args.max_windows)
    finally:
        transport.stop()
    print(f"published {sent} windows for {len(assets)} assets")
    return 0
