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
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from faultline.agent.simulator import encode_for_wire
from faultline.agent.transport.broker import MosquittoProcess
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.recordings import (
    iter_windows,
    read_manifest,
    read_recording,
)
from tests.harness import build_test_library

RECORDS = ("97", "108", "133", "121", "172", "200")


class Sink:
    """Counts arrivals and records publish->arrival latency from a stamp in the payload."""

    def __init__(self, port: int, topic: str, expected: int, stamp: str) -> None:
        self.expected = expected
        self.latencies: list[float] = []
        self.agent_latencies: list[float] = []
        self.done = threading.Event()
        self.last_arrival = 0.0
        self._stamp = stamp
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

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        if self._stamp == "ts":
            body = json.loads(msg.payload)
            sent = float(body["window_ts"])
            self.agent_latencies.append(float(body["latency_ms"]))
        else:  # loopback: the sent time is the topic's last level
            sent = float(msg.topic.rsplit("/", 1)[1])
        self.latencies.append((now - sent) * 1000)
        self.last_arrival = time.monotonic()
        if len(self.latencies) >= self.expected:
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


def broker_loopback(port: int, payloads: list[bytes]) -> dict[str, float]:
    sink = Sink(port, "bench/loop/+", len(payloads), stamp="topic")
    pub = _publisher(port)
    start = time.monotonic()
    infos = [pub.publish(f"bench/loop/{time.time():.6f}", p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(30)
    sink.done.wait(120)
    elapsed = sink.last_arrival - start
    pub.loop_stop()
    sink.close()
    return {
        "rate": len(sink.latencies) / elapsed,
        "p50": _pct(sink.latencies, 50),
        "p99": _pct(sink.latencies, 99),
        "received": len(sink.latencies),
    }


def agent_run(
    port: int, windows: list, fmt: str, library_root: Path, prefix: str
) -> dict[str, float]:
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
        [sys.executable, "-m", "faultline.agent.cli", "--log-level", "WARNING", "run"],
        env=env,
    )
    status_seen = threading.Event()
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex[:8])
    watcher.on_message = lambda _c, _u, m: status_seen.set() if b'"online"' in m.payload else None
    watcher.on_connect = lambda c, *_a: c.subscribe(f"{prefix}/status/+", qos=1)
    watcher.connect("127.0.0.1", port)
    watcher.loop_start()
    if not status_seen.wait(120):
        proc.kill()
        raise SystemExit("agent did not come online")
    watcher.loop_stop()
    sink = Sink(port, f"{prefix}/alerts/+", len(windows), stamp="ts")
    pub = _publisher(port)
    time.sleep(0.5)
    start = time.monotonic()
    infos = []
    for window in windows:
        stamped = window.__class__(**{**_fields(window), "ts": time.time()})
        topic = f"{prefix}/sensors/{window.asset}/window"
        infos.append(pub.publish(topic, encode_for_wire(stamped, fmt), qos=1))
    for info in infos:
        info.wait_for_publish(60)
    sink.done.wait(300)
    elapsed = sink.last_arrival - start
    pub.loop_stop()
    sink.close()
    proc.terminate()
    proc.wait(60)
    return {
        "rate": len(sink.latencies) / elapsed,
        "p50": _pct(sink.latencies, 50),
        "p99": _pct(sink.latencies, 99),
        "agent_p50": _pct(sink.agent_latencies, 50),
        "agent_p99": _pct(sink.agent_latencies, 99),
        "received": len(sink.latencies),
    }


def _fields(window: object) -> dict[str, object]:
    return {name: getattr(window, name) for name in window.__slots__}  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--format", choices=["json", "binary"], default="json")
    parser.add_argument("--cwru", default=str(REPO.parent / "shared/data/cwru"))
    args = parser.parse_args()

    cwru = Path(os.environ.get("FAULTLINE_CWRU_DIR", args.cwru))
    entries = {e.record_id: e for e in read_manifest(cwru)}
    pool = []
    for record_id in RECORDS:
        entry = entries[record_id]
        rec = read_recording(entry.path, fs=entry.fs, rpm=entry.rpm)
        pool += list(iter_windows(rec, f"asset-{record_id}", window_s=1.0, hop_s=0.25))
    windows = [pool[i % len(pool)] for i in range(args.windows)]
    payloads = [encode_for_wire(w, args.format) for w in windows]
    size = int(np.mean([len(p) for p in payloads]))

    with tempfile.TemporaryDirectory() as tmp, MosquittoProcess() as broker:
        encoder = SpectrumEncoder()
        library_root = Path(tmp) / "library"
        build_test_library(cwru, library_root, encoder)
        loop = broker_loopback(broker.port, payloads)
        agent = agent_run(broker.port, windows, args.format, library_root, "bench")

    print(f"payload: {args.format}, {size:,} bytes mean, {len(payloads)} windows (1 s, 12/48 kHz)")
    print(f"{'path':<34}{'msgs/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'received':>10}")
    print(
        f"{'broker loopback (ceiling)':<34}{loop['rate']:>10.1f}{loop['p50']:>10.1f}"
        f"{loop['p99']:>10.1f}{loop['received']:>10.0f}"
    )
    print(
        f"{'agent: window -> alert':<34}{agent['rate']:>10.1f}{agent['p50']:>10.1f}"
        f"{agent['p99']:>10.1f}{agent['received']:>10.0f}"
    )
    print(
        f"agent processing latency (receipt -> verdict): p50 {agent['agent_p50']:.1f} ms, "
        f"p99 {agent['agent_p99']:.1f} ms"
    )
    print(f"ratio agent/broker throughput: {agent['rate'] / loop['rate']:.3f}")


if __name__ == "__main__":
    main()
