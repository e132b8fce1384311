"""End-to-end throughput and latency against a real local Mosquitto.

Measures, in one run and for the same payloads:
  * the broker's own loopback rate (publish -> receive, no agent): the ceiling;
  * the agent's sustained rate (publish window -> alert received) and alert latency.
The agent runs as a separate `faultline run` process, as on a gateway; this process is
the sensor fleet and the dashboard. Prints the agent/broker ratio.

    python bench/e2e.py [--windows 2000] [--format json|binary] [--cwru ../shared/data/cwru]

bench/outbox.py reuses these pieces (sink, agent process, closed-loop phases) to compare the
agent with its durable outbox on and off.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from faultline.agent.simulator import encode_for_wire
from faultline.agent.transport.broker import MosquittoProcess
from faultline.encoders.signals import Window
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.catalog import read_manifest
from faultline.fault_library.recordings import iter_windows, read_recording
from tests.harness import build_test_library

RECORDS = ("97", "108", "133", "121", "172", "200")
DEFAULT_CWRU = REPO.parent / "shared/data/cwru"
SAMPLES_KEPT = 256  # alert payloads a sink keeps, for benches that need real ones


class Sink:
    """Counts arrivals and records publish -> arrival latency per message key.

    Each new key also frees a slot for a closed-loop publisher (``expect(n, outstanding)``),
    and the first alert payloads are kept so other benches can reuse real ones.
    """

    def __init__(self, port: int, topic: str, key: str) -> None:
        self.arrivals: dict[float, float] = {}
        self.agent_latencies: list[float] = []
        self.sizes: list[int] = []
        self.samples: list[bytes] = []
        self.expected = 0
        self.done = threading.Event()
        self._slots: threading.Semaphore | None = None
        self._key = key
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-sink-{uuid.uuid4().hex[:6]}"
        )
        self._client.on_message = self._on_message
        ready = threading.Event()
        self._client.on_subscribe = lambda *_a: ready.set()
        self._client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        ready.wait(10)

    def expect(self, n: int, outstanding: int = 0) -> None:
        """Start a phase of ``n`` messages; ``outstanding`` > 0: at most that many unanswered."""
        with self._lock:
            self.arrivals.clear()
            self.agent_latencies.clear()
            self.sizes.clear()
            self.expected = n
            self._slots = threading.Semaphore(outstanding) if outstanding > 0 else None
            self.done.clear()

    def wait_slot(self, timeout: float) -> bool:
        """Closed loop: block until fewer than ``outstanding`` messages are unanswered."""
        slots = self._slots
        return slots is None or slots.acquire(timeout=timeout)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        if self._key == "alert":
            body = json.loads(msg.payload)
            key = float(body["window_ts"])
            self.agent_latencies.append(float(body["latency_ms"]))
        else:  # loopback: the key is the topic's last level
            key = float(msg.topic.rsplit("/", 1)[1])
        with self._lock:
            new = key not in self.arrivals
            self.arrivals[key] = now
            self.sizes.append(len(msg.payload))
            if len(self.samples) < SAMPLES_KEPT:
                self.samples.append(bytes(msg.payload))
            if len(self.arrivals) >= self.expected:
                self.done.set()
            if new and self._slots is not None:
                self._slots.release()

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_phase(
    port: int,
    sink: Sink,
    messages: list[tuple[str, float, bytes]],
    interval_s: float,
    timeout_s: float = 300,
    outstanding: int = 0,
) -> dict[str, float]:
    """Publish (topic, key, payload) messages, every ``interval_s`` (0: flat out).

    ``outstanding`` > 0 closes the loop: a message is published only while fewer than that
    many are unanswered, so the rate is what the receiving side sustains, not a burst.
    """
    sink.expect(len(messages), outstanding)
    pub = _publisher(port)
    sent: dict[float, float] = {}
    start = time.monotonic()
    infos = []
    for i, (topic, key, payload) in enumerate(messages):
        if interval_s > 0:
            delay = start + i * interval_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if not sink.wait_slot(timeout_s):
            break  # the receiving side stopped answering: report what arrived
        sent[key] = time.monotonic()
        infos.append(pub.publish(topic, payload, qos=1))
    for info in infos:
        info.wait_for_publish(60)
    sink.done.wait(timeout_s)
    pub.loop_stop()
    latencies = [(sink.arrivals[k] - sent[k]) * 1000 for k in sent if k in sink.arrivals]
    last = max(sink.arrivals.values()) if sink.arrivals else start
    return {
        "rate": len(sink.arrivals) / (last - start),
        "p50": _pct(latencies, 50),
        "p99": _pct(latencies, 99),
        "agent_p50": _pct(sink.agent_latencies, 50),
        "agent_p99": _pct(sink.agent_latencies, 99),
        "received": len(sink.arrivals),
        "sent": len(messages),
    }


def start_agent(
    port: int,
    library_root: Path,
    prefix: str,
    data_dir: Path,
    extra_env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``faultline run`` as a separate process; returns once its status says online.

    ``data_dir`` holds its state (outbox, answered windows): a fresh one per agent, since a
    shared one would answer a later phase's windows as duplicates of an earlier one's.
    """
    env = dict(os.environ)
    env.update(
        {
            "FAULTLINE__MQTT__PORT": str(port),
            "FAULTLINE__MQTT__CLIENT_ID": f"bench-agent-{uuid.uuid4().hex[:6]}",
            "FAULTLINE__TOPICS__PREFIX": prefix,
            "FAULTLINE__LIBRARY__PATH": str(library_root),
            "FAULTLINE__DATA_DIR": str(data_dir),
            "FAULTLINE__PIPELINE__QUEUE_SIZE": "512",
            # The hot path alone: reports are written by the template (bench/llm.py
            # measures the alert path with the model busy).
            "FAULTLINE__REPORTS__LLM": "false",
            **(extra_env or {}),
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "faultline.agent.cli", "--log-level", "WARNING", "run"], env=env
    )
    online = threading.Event()
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex[:8])
    watcher.on_message = lambda _c, _u, m: online.set() if b'"online"' in m.payload else None
    watcher.on_connect = lambda c, *_a: c.subscribe(f"{prefix}/status/+", qos=1)
    watcher.connect("127.0.0.1", port)
    watcher.loop_start()
    if not online.wait(120):
        proc.kill()
        raise SystemExit("agent did not come online")
    watcher.loop_stop()
    return proc


def window_messages(
    windows: list[Window], fmt: str, prefix: str, first: int = 0
) -> list[tuple[str, float, bytes]]:
    """Pre-encoded sensor messages; each window's ts is unique so alerts map back to it.

    ``first`` numbers them on from an earlier phase: the agent answers a window it has seen
    once only (a redelivery), so a phase that sent the same timestamps again would wait for
    alerts that never come.
    """
    out = []
    for i, window in enumerate(windows, start=first):
        key = 1.7e9 + i * 0.001
        payload = encode_for_wire(replace(window, ts=key), fmt)
        out.append((f"{prefix}/sensors/{window.asset}/window", key, payload))
    return out


def cwru_dir(arg: str) -> Path:
    """The CWRU folder: ``FAULTLINE_CWRU_DIR`` wins over the command line (as in the tests)."""
    return Path(os.environ.get("FAULTLINE_CWRU_DIR", arg))


def load_windows(cwru: Path, n: int) -> list[Window]:
    """``n`` one-second windows cycled from the CWRU records (12 and 48 kHz)."""
    entries = {e.record_id: e for e in read_manifest(cwru)}
    pool: list[Window] = []
    for record_id in RECORDS:
        entry = entries[record_id]
        rec = read_recording(entry.path, fs=entry.fs, rpm=entry.rpm)
        pool += list(iter_windows(rec, f"asset-{record_id}", window_s=1.0, hop_s=0.25))
    return [pool[i % len(pool)] for i in range(n)]


def add_window_args(parser: argparse.ArgumentParser, *, windows: int, fmt: str) -> None:
    """--windows, --format and --cwru, which every agent bench takes (defaults per bench)."""
    parser.add_argument("--windows", type=int, default=windows, help="measured windows")
    parser.add_argument("--format", choices=["json", "binary"], default=fmt)
    parser.add_argument("--cwru", default=str(DEFAULT_CWRU))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_window_args(parser, windows=2000, fmt="json")
    parser.add_argument(
        "--paced-fraction",
        type=float,
        default=0.5,
        help="latency phase rate as a fraction of the measured agent rate",
    )
    args = parser.parse_args()

    cwru = cwru_dir(args.cwru)
    windows = load_windows(cwru, args.windows)
    agent_msgs = window_messages(windows, args.format, "bench")
    loop_msgs = [(f"bench/loop/{key}", key, payload) for _t, key, payload in agent_msgs]
    size = int(np.mean([len(p) for _t, _k, p in agent_msgs]))

    with tempfile.TemporaryDirectory() as tmp, MosquittoProcess() as broker:
        encoder = SpectrumEncoder()
        library_root = Path(tmp) / "library"
        build_test_library(cwru, library_root, encoder)
        loop_sink = Sink(broker.port, "bench/loop/+", key="loop")
        loop = run_phase(broker.port, loop_sink, loop_msgs, interval_s=0)
        loop_sink.close()
        proc = start_agent(broker.port, library_root, "bench", Path(tmp) / "state")
        sink = Sink(broker.port, "bench/alerts/+", key="alert")
        try:
            blast = run_phase(broker.port, sink, agent_msgs, interval_s=0)
            paced_rate = blast["rate"] * args.paced_fraction
            n_paced = min(len(agent_msgs), int(paced_rate * 20))  # about 20 s
            paced_msgs = window_messages(windows[:n_paced], args.format, "bench", len(windows))
            paced = run_phase(broker.port, sink, paced_msgs, 1.0 / paced_rate)
        finally:
            sink.close()
            proc.terminate()
            proc.wait(60)

    print(
        f"payload: {args.format}, {size:,} bytes mean, {len(agent_msgs)} windows of 1 s "
        f"(CWRU records {', '.join(RECORDS)}; 12 and 48 kHz), {os.cpu_count()} cores"
    )
    print(f"{'path':<40}{'msgs/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'recv/sent':>11}")
    for name, row in (
        ("broker loopback, flat out (ceiling)", loop),
        ("agent window->alert, flat out", blast),
        (f"agent window->alert, paced {paced_rate:.0f}/s", paced),
    ):
        print(
            f"{name:<40}{row['rate']:>9.1f}{row['p50']:>9.1f}{row['p99']:>9.1f}"
            f"{row['received']:>6.0f}/{row['sent']:<5.0f}"
        )
    print(
        f"agent processing latency (receipt -> verdict) when paced: "
        f"p50 {paced['agent_p50']:.1f} ms, p99 {paced['agent_p99']:.1f} ms"
    )
    print(f"ratio agent/broker sustained throughput: {blast['rate'] / loop['rate']:.3f}")


if __name__ == "__main__":
    main()
