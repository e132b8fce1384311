"""End-to-end throughput and latency against a real local Mosquitto.

Measures, in one run and for the same payloads:
  * the broker's own loopback rate (publish -> receive, no agent): the ceiling;
  * the agent's sustained rate (publish window -> alert received) and alert latency.
The agent runs as a separate `faultline run` process, as on a gateway; this process is
the sensor fleet and the dashboard. Prints the agent/broker ratio.

    python bench/e2e.py [--windows 2000] [--format json|binary] [--cwru ../shared/data/cwru]
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
from dataclasses import replace
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

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


class Sink:
    """Counts arrivals and records publish -> arrival latency per message key."""

    def __init__(self, port: int, topic: str, key: str) -> None:
        self.arrivals: dict[float, float] = {}
        self.agent_latencies: list[float] = []
        self.expected = 0
        self.done = threading.Event()
        self._key = key
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-sink-{uuid.uuid4().hex[:6]}"
        )
        self._client.on_message = self._on_message
        ready = threading.Event()
        self._client.on_subscribe = lambda *_a: ready.set()
        self._client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        ready.wait(10)

    def expect(self, n: int) -> None:
        with self._lock:
            self.arrivals.clear()
            self.agent_latencies.clear()
            self.expected = n
            self.done.clear()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        if self._key == "alert":
            body = json.loads(msg.payload)
            key = float(body["window_ts"])
            self.agent_latencies.append(float(body["latency_ms"]))
        else:  # loopback: the key is the topic's last level
            key = float(msg.topic.rsplit("/", 1)[1])
        with self._lock:
            self.arrivals[key] = now
            if len(self.arrivals) >= self.expected:
                self.done.set()

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}"
    )
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
) -> dict[str, float]:
    """Publish (topic, key, payload) messages, every ``interval_s`` (0: flat out)."""
    sink.expect(len(messages))
    pub = _publisher(port)
    sent: dict[float, float] = {}
    start = time.monotonic()
    infos = []
    for i, (topic, key, payload) in enumerate(messages):
        if interval_s > 0:
            delay = start + i * interval_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
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


def start_agent(port: int, library_root: Path, prefix: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        {
            "FAULTLINE__MQTT__PORT": str(port),
            "FAULTLINE__MQTT__CLIENT_ID": f"bench-agent-{uuid.uuid4().hex[:6]}",
            "FAULTLINE__TOPICS__PREFIX": prefix,
            "FAULTLINE__LIBRARY__PATH": str(library_root),
            "FAULTLINE__PIPELINE__QUEUE_SIZE": "512",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "faultline.agent.cli", "--log-level", "WARNING", "run"], env=env
    )
    online = threading.Event()
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex[:8])
    watcher.on_message = lambda _c, _u, m: online.set() if b'"online"' in m.payload else None
    watcher.on_connect = lambda c, *_a: c.subscribe(f"{prefix}/status/+", qos=1)
    watcher.connect("127.0.0.1", port)
    watcher.loop_start()
    if not online.wait(120):
        proc.kill()
        raise SystemExit("agent did not come online")
    watcher.loop_stop()
    return proc


def window_messages(windows: list[Window], fmt: str, prefix: str) -> list[tuple[str, float, bytes]]:
    """Pre-encoded sensor messages; each window's ts is unique so alerts map back to it."""
    out = []
    for i, window in enumerate(windows):
        key = 1.7e9 + i * 0.001
        payload = encode_for_wire(replace(window, ts=key), fmt)
        out.append((f"{prefix}/sensors/{window.asset}/window", key, payload))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--format", choices=["json", "binary"], default="json")
    parser.add_argument(
        "--paced-fraction",
        type=float,
        default=0.5,
        help="latency phase rate as a fraction of the measured agent rate",
    )
    parser.add_argument("--cwru", default=str(REPO.parent / "shared/data/cwru"))
    args = parser.parse_args()

    cwru = Path(os.environ.get("FAULTLINE_CWRU_DIR", args.cwru))
    entries = {e.record_id: e for e in read_manifest(cwru)}
    pool: list[Window] = []
    for record_id in RECORDS:
        entry = entries[record_id]
        rec = read_recording(entry.path, fs=entry.fs, rpm=entry.rpm)
        pool += list(iter_windows(rec, f"asset-{record_id}", window_s=1.0, hop_s=0.25))
    windows = [pool[i % len(pool)] for i in range(args.windows)]
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
        proc = start_agent(broker.port, library_root, "bench")
        sink = Sink(broker.port, "bench/alerts/+", key="alert")
        try:
            blast = run_phase(broker.port, sink, agent_msgs, interval_s=0)
            paced_rate = blast["rate"] * args.paced_fraction
            n_paced = min(len(agent_msgs), int(paced_rate * 20))  # about 20 s
            paced = run_phase(broker.port, sink, agent_msgs[:n_paced], 1.0 / paced_rate)
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
