"""``faultline demo``: the whole product on one machine in one command.

Loads (or builds once) the default library, finds a broker or starts one, runs the agent
and a simulator replaying held-out recordings of four conditions, and prints the alerts
as an operator's dashboard would receive them.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from faultline.agent.app import (
    Agent,
    default_library_root,
    encoder_from_settings,
    install_stop_signals,
    topics_from_settings,
    transport_from_settings,
)
from faultline.agent.commands.feedback import Feedback, add_feedback_args
from faultline.agent.commands.run import settings_or_exit
from faultline.agent.library_setup import load_or_build_library
from faultline.agent.settings import Settings
from faultline.agent.simulator import SimulatedAsset, Simulator
from faultline.agent.transport.broker import EmbeddedBroker, broker_reachable, start_embedded_broker
from faultline.agent.transport.mqtt import InboundMessage
from faultline.fault_library.catalog import read_manifest
from faultline.fault_library.demo import DEMO_DIR, DEMO_STREAMS
from faultline.fault_library.recordings import read_recording

log = logging.getLogger(__name__)

CONDITION = {"97": "healthy", "108": "inner race", "133": "outer race", "188": "ball"}


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="run broker + agent + simulated sensors and print alerts live",
        description=(
            "One-command demo. Uses the configured broker when reachable, otherwise starts "
            "an embedded one (mosquitto when installed, else the pure-Python amqtt broker). "
            "Replays held-out CWRU recordings (3 hp loads and the second half of the healthy "
            "record, none of which the default library learned from) as four assets, and "
            "prints every alert until Ctrl-C or --duration."
        ),
    )
    parser.add_argument("--config", "-c", default=None, help="YAML configuration file")
    parser.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    parser.add_argument("--speed", type=float, default=4.0, help="replay speed (default 4x)")
    parser.add_argument(
        "--format", choices=["json", "binary", "spectrum"], default="json", help="wire format"
    )
    parser.add_argument(
        "--broker",
        choices=["auto", "embedded", "configured"],
        default="auto",
        help="auto: configured broker if reachable, else embedded",
    )
    parser.add_argument(
        "--embedded",
        choices=["auto", "mosquitto", "amqtt"],
        default="auto",
        help="which embedded broker to start when one is needed (auto: mosquitto if installed)",
    )
    add_feedback_args(parser)
    parser.set_defaults(handler=run)


def _with_broker(settings: Settings, host: str, port: int, protocol: str) -> Settings:
    mqtt = settings.mqtt.model_copy(update={"host": host, "port": port, "protocol": protocol})
    return settings.model_copy(update={"mqtt": mqtt})


def _choose_broker(
    settings: Settings, mode: str, embedded: str, feedback: Feedback
) -> tuple[Settings, EmbeddedBroker | None]:
    host, port = settings.mqtt.host, settings.mqtt.port
    if mode != "embedded" and broker_reachable(host, port):
        feedback.say(f"using the configured broker at {host}:{port}")
        return settings, None
    if mode == "configured":
        raise SystemExit(f"faultline: no MQTT broker answers at {host}:{port}")
    broker = start_embedded_broker(prefer=embedded)  # type: ignore[arg-type]
    feedback.say(
        f"no broker at {host}:{port}: started an embedded {broker.kind} on "
        f"{broker.host}:{broker.port} (MQTT {broker.protocol})"
    )
    return _with_broker(settings, broker.host, broker.port, broker.protocol), broker


class AlertPrinter:
    """Prints alerts and rejections the way an operator's dashboard would show them
    (through ``say``: nothing with --quiet, stderr beside --json)."""

    def __init__(self, say: Callable[[str], None] = print) -> None:
        self.say = say
        self.labels: dict[str, Counter[str]] = defaultdict(Counter)
        self.latencies: list[float] = []
        self.errors = 0
        self.reports = 0
        self._lock = threading.Lock()

    def __call__(self, message: InboundMessage) -> None:
        try:
            body = json.loads(message.payload)
        except ValueError:
            return
        with self._lock:
            if body.get("schema", "").startswith("faultline.error"):
                self.errors += 1
                self.say(f"  ERROR  {body.get('topic')}: {body.get('code')}: {body.get('reason')}")
                return
            if body.get("schema", "").startswith("faultline.report"):
                self.reports += 1
                severity = body.get("severity") or {}
                self.say(
                    f"  REPORT {body['asset']:<12} ({body['trigger']}, {body['generated_by']}"
                    + (f", {body['fallback']}" if body.get("fallback") else "")
                    + f") zone {severity.get('zone', '-')}, damage stage "
                    f"{severity.get('damage_stage', '-')}: {body['narrative'][:160]}"
                )
                return
            if not body.get("schema", "").startswith("faultline.alert"):
                return
            asset = body["asset"]
            self.labels[asset][body["label"]] += 1
            self.latencies.append(float(body["latency_ms"]))
            top = body["neighbours"][0] if body["neighbours"] else {}
            self.say(
                f"  #{body['seq']:<5} {asset:<12} {body['label']:<11} "
                f"conf {body['confidence']:.2f}  nearest {top.get('label', '-'):<10} "
                f"{top.get('score', 0):.3f}  {body['latency_ms']:6.1f} ms"
                + (f"  [{body['evidence']}]" if body.get("evidence") else "")
            )

    def latency_ms(self) -> dict[str, float]:
        if not self.latencies:
            return {}
        ordered = sorted(self.latencies)
        return {
            "p50": round(ordered[len(ordered) // 2], 2),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "alerts": {asset: dict(c.most_common()) for asset, c in sorted(self.labels.items())},
            "latency_ms": self.latency_ms(),
            "rejections": self.errors,
            "reports": self.reports,
        }

    def line(self) -> str:
        """``--quiet``'s one line: each asset's most frequent label."""
        top = ", ".join(
            f"{asset} {c.most_common(1)[0][0]}" for asset, c in sorted(self.labels.items())
        )
        total = sum(sum(c.values()) for c in self.labels.values())
        return f"demo: {total} alerts; {top or 'none'}; {self.errors} rejections"

    def summary(self) -> str:
        lines = ["", "summary (asset: alerts by label):"]
        for asset, counts in sorted(self.labels.items()):
            lines.append(f"  {asset:<12} {dict(counts.most_common())}")
        if self.latencies:
            ordered = sorted(self.latencies)
            p50 = ordered[len(ordered) // 2]
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            lines.append(
                f"  latency p50 {p50:.1f} ms, p99 {p99:.1f} ms, rejections {self.errors}, "
                f"reports {self.reports}"
            )
        return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    feedback = Feedback.from_args(args)
    settings = settings_or_exit(args.config)
    encoder = encoder_from_settings(settings)
    library = load_or_build_library(
        default_library_root(settings), encoder, progress=not feedback.quiet
    )
    counts = {view: v["count"] for view, v in library.info()["views"].items()}
    feedback.say(f"fault library {library.version}: signatures per view {counts}")
    settings, broker = _choose_broker(settings, args.broker, args.embedded, feedback)
    stop = threading.Event()
    install_stop_signals(stop)
    agent = Agent(settings, library, encoder)
    topics = topics_from_settings(settings)
    printer = AlertPrinter(feedback.say)
    viewer = transport_from_settings(
        settings,
        client_id=f"{agent.client_id}-viewer",
        status_topic=f"{topics.prefix}/status/{agent.client_id}-viewer",
        status_online=lambda: {"role": "demo viewer"},
        on_message=printer,
    )
    viewer.subscribe([topics.alert("+"), topics.report("+"), topics.errors])
    entries = {e.record_id: e for e in read_manifest(DEMO_DIR)}
    assets = [
        SimulatedAsset(
            asset=s.asset,
            recording=read_recording(entries[s.record_id].path),
            start_s=s.start_s,
            stop_s=s.stop_s,
        )
        for s in DEMO_STREAMS
    ]
    for s in DEMO_STREAMS:
        feedback.say(
            f"  asset {s.asset:<12} replays record {s.record_id} ({CONDITION.get(s.record_id)})"
        )
    sim_transport = transport_from_settings(
        settings,
        client_id=f"{agent.client_id}-sim",
        status_topic=f"{topics.prefix}/status/{agent.client_id}-sim",
        status_online=lambda: {"role": "demo simulator"},
        on_message=lambda _m: None,
    )
    simulator = Simulator(
        lambda topic, payload: sim_transport.publish(topic, payload, qos=1),
        topics,
        assets,
        window_s=settings.encoder.window_s,
        speed=args.speed,
        fmt=args.format,
        loop=True,
    )
    try:
        agent.start()
        viewer.start()
        sim_transport.start()
        for transport in (agent.transport, viewer, sim_transport):
            transport.wait_connected(10.0)
        feedback.say("streaming; Ctrl-C to stop\n")
        sim_thread = threading.Thread(target=simulator.run, args=(stop,), daemon=True)
        sim_thread.start()
        started = time.monotonic()
        deadline = started + args.duration if args.duration else None
        # The bar counts the run's seconds (of --duration, when given) on stderr.
        with feedback.progress_bar("demo", total=args.duration, unit="s") as bar:
            while not stop.wait(0.2):
                now = time.monotonic()
                bar.n = round(now - started, 1)
                alerts = sum(sum(c.values()) for c in printer.labels.values())
                bar.set_postfix_str(f"{alerts} alerts", refresh=False)
                bar.refresh()
                if deadline is not None and now >= deadline:
                    stop.set()
        sim_thread.join(timeout=5)
        time.sleep(0.5)  # let the last alerts arrive
    finally:
        stop.set()
        sim_transport.stop()
        agent.stop()
        viewer.stop()
        if broker is not None:
            broker.stop()
    if feedback.human:
        print(printer.summary())
    feedback.result(printer.as_json(), "" if feedback.human else printer.line())
    return 0
