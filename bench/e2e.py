"""End-to-end throughput and latency of the hot path, against its transport ceiling.

Measured in one run, on the same broker and the same pre-encoded CWRU windows (issue 12):

* **ceiling**: ``N`` echo receivers (separate processes, one ``$share`` group): each takes
  a window off the broker and answers with a small QoS 1 alert, reading only the window's
  timestamp (never the samples). This is what MQTT and this machine can carry.
* **agent**: ``faultline run --processes N`` (the product, defaults, full diagnosis).

Each is driven closed-loop with a fixed number of windows outstanding (16, then 256: the
rate is what the receiving side sustains, not a burst), then open-loop at half the rate it
sustained at 16 (latency at a load it can carry). Printed per phase: windows/s, p50/p99
latency (publish -> alert received), lost and duplicate alerts, alerts of one asset out of
window order, CPU per process group; then the ratios the issue sets targets for.

    python bench/e2e.py [--windows 2000] [--format json|binary] [--processes N]
                        [--outstanding 16 256] [--soak SECONDS] [--json results.json]

``--soak S`` instead runs the agent open-loop at half its rate for S seconds and samples the
resident memory of every agent process (growth is what it reports).

bench/outbox.py reuses these pieces (sink, agent process, closed-loop phases) to compare the
agent with its durable outbox on and off.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import tables
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
WARMUP_WINDOWS = 200
OPEN_LOOP_S = 15.0  # length of the half-load phase


class Sink:
    """Counts arrivals and records publish -> arrival latency per message key.

    Each new key also frees a slot for a closed-loop publisher (``expect(n, outstanding)``);
    copies of a key already seen are counted as duplicates; for alerts, each alert's
    ``(agent_id, asset)`` stream remembers ``(seq, window_ts)`` of its first copies so the
    order of one asset's alerts can be checked; the first payloads are kept so other
    benches can reuse real ones.
    """

    def __init__(self, port: int, topic: str, key: str) -> None:
        self.arrivals: dict[float, float] = {}
        self.agent_latencies: list[float] = []
        self.sizes: list[int] = []
        self.samples: list[bytes] = []
        self.duplicates = 0
        self.streams: dict[tuple[str, str], list[tuple[int, float]]] = {}
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
            self.streams.clear()
            self.duplicates = 0
            self.expected = n
            self._slots = threading.Semaphore(outstanding) if outstanding > 0 else None
            self.done.clear()

    def wait_slot(self, timeout: float) -> bool:
        """Closed loop: block until fewer than ``outstanding`` messages are unanswered."""
        slots = self._slots
        return slots is None or slots.acquire(timeout=timeout)

    def order_inversions(self) -> int:
        """Alerts numbered (``seq``) before an alert of an earlier window of the same asset
        by the same agent process: what a consumer ordering by ``seq`` would get wrong."""
        bad = 0
        for stream in self.streams.values():
            by_seq = [ts for _seq, ts in sorted(stream)]
            bad += sum(1 for a, b in itertools.pairwise(by_seq) if b < a)
        return bad

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        stream: tuple[str, str] | None = None
        seq = 0
        if self._key == "alert":
            body = orjson.loads(msg.payload)
            key = float(body["window_ts"])
            self.agent_latencies.append(float(body.get("latency_ms", 0.0)))
            if "seq" in body:
                stream = (str(body.get("agent_id")), msg.topic)
                seq = int(body["seq"])
        else:  # loopback: the key is the topic's last level
            key = float(msg.topic.rsplit("/", 1)[1])
        with self._lock:
            new = key not in self.arrivals
            if not new:
                self.duplicates += 1
                return
            self.arrivals[key] = now
            self.sizes.append(len(msg.payload))
            if stream is not None:
                self.streams.setdefault(stream, []).append((seq, key))
            if len(self.samples) < SAMPLES_KEPT:
                self.samples.append(bytes(msg.payload))
            if len(self.arrivals) >= self.expected:
                self.done.set()
            if self._slots is not None:
                self._slots.release()

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def _publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(300)
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
    cpu: CpuMeter | None = None,
) -> dict[str, float]:
    """Publish (topic, key, payload) messages, every ``interval_s`` (0: flat out).

    ``outstanding`` > 0 closes the loop: a message is published only while fewer than that
    many are unanswered, so the rate is what the receiving side sustains, not a burst.
    ``cpu``, when given, is read at the start and end of the phase.
    """
    sink.expect(len(messages), outstanding)
    pub = _publisher(port)
    sent: dict[float, float] = {}
    if cpu is not None:
        cpu.start()
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
    last = max(sink.arrivals.values()) if sink.arrivals else start
    usage = {} if cpu is None else cpu.stop(last - start)
    time.sleep(0.5)  # late duplicates (a redelivery) still count
    pub.loop_stop()
    latencies = [(sink.arrivals[k] - sent[k]) * 1000 for k in sent if k in sink.arrivals]
    return {
        "rate": len(sink.arrivals) / max(last - start, 1e-9),
        "p50": _pct(latencies, 50),
        "p99": _pct(latencies, 99),
        "agent_p50": _pct(sink.agent_latencies, 50),
        "agent_p99": _pct(sink.agent_latencies, 99),
        "received": len(sink.arrivals),
        "sent": len(messages),
        "lost": len(messages) - len(sink.arrivals),
        "duplicates": sink.duplicates,
        "order_inversions": sink.order_inversions(),
        **{f"cpu_{name}": pct for name, pct in usage.items()},
    }


# --- processes: CPU and memory from /proc ------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of one process, MB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out += [int(c) for c in text]
    except OSError:
        pass
    return out


@dataclass
class CpuMeter:
    """CPU use of named groups of processes over a phase, in % of one core."""

    groups: dict[str, list[int]]
    _before: dict[str, float] = field(default_factory=dict)

    def _read(self) -> dict[str, float]:
        out = {name: sum(_cpu_seconds(p) for p in pids) for name, pids in self.groups.items()}
        times = os.times()
        out["bench"] = times.user + times.system
        return out

    def start(self) -> None:
        self._before = self._read()

    def stop(self, wall_s: float) -> dict[str, float]:
        after = self._read()
        return {k: 100.0 * (after[k] - self._before[k]) / max(wall_s, 1e-9) for k in after}


# --- the two receivers -------------------------------------------------------------------


def _agent_env(
    port: int, library_root: Path, prefix: str, data_dir: Path, extra: Mapping[str, str] | None
) -> dict[str, str]:
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
            **(extra or {}),
        }
    )
    return env


def wait_online(port: int, prefix: str, n: int, timeout_s: float = 120) -> bool:
    """True once ``n`` distinct agent processes have said ``online`` under ``prefix``."""
    online: set[str] = set()
    done = threading.Event()

    def on_message(_c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        if b'"online"' in m.payload:
            online.add(m.topic)
            if len(online) >= n:
                done.set()

    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex[:8])
    watcher.on_message = on_message
    watcher.on_connect = lambda c, *_a: c.subscribe(f"{prefix}/status/+", qos=1)
    watcher.connect("127.0.0.1", port)
    watcher.loop_start()
    ok = done.wait(timeout_s)
    watcher.loop_stop()
    watcher.disconnect()
    return ok


def start_agent(
    port: int,
    library_root: Path,
    prefix: str,
    data_dir: Path,
    extra_env: Mapping[str, str] | None = None,
    processes: int = 1,
) -> subprocess.Popen[bytes]:
    """``faultline run --processes N`` as a separate process; returns once every agent
    process's status says online.

    ``data_dir`` holds its state (outbox, answered windows): a fresh one per agent, since a
    shared one would answer a later phase's windows as duplicates of an earlier one's.
    """
    env = _agent_env(port, library_root, prefix, data_dir, extra_env)
    argv = [sys.executable, "-m", "faultline.agent.cli", "--log-level", "WARNING", "run"]
    proc = subprocess.Popen([*argv, "--processes", str(processes)], env=env)
    if not wait_online(port, prefix, processes):
        proc.kill()
        raise SystemExit("agent did not come online")
    return proc


def stage_profiles(port: int, prefix: str, n: int, timeout_s: float = 10) -> list[dict[str, Any]]:
    """Each agent process's per-window stage times (its status, asked for by command)."""
    got: dict[str, dict[str, Any]] = {}
    done = threading.Event()

    def on_message(_c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        body = orjson.loads(m.payload)
        if body.get("state") == "online" and "stages" in body and m.retain == 0:
            got[m.topic] = body["stages"]
            if len(got) >= n:
                done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex[:8])
    client.on_message = on_message
    ready = threading.Event()
    client.on_subscribe = lambda *_a: ready.set()
    client.on_connect = lambda c, *_a: c.subscribe(f"{prefix}/status/+", qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    ready.wait(10)
    client.publish(f"{prefix}/commands/all", b'{"command": "status"}', qos=1).wait_for_publish(5)
    done.wait(timeout_s)
    client.loop_stop()
    client.disconnect()
    return [got[k] for k in sorted(got)]


def agent_pids(proc: subprocess.Popen[bytes]) -> list[int]:
    """The agent processes: the supervisor's children, or the process itself."""
    return children(proc.pid) or [proc.pid]


_JSON_TS = re.compile(rb'"ts"\s*:\s*([-0-9.eE+]+)')
_BINARY_TS = struct.Struct("<d")


def window_ts(payload: bytes) -> float:
    """The window's timestamp read from its head: binary header offset 8, or the JSON
    ``ts`` field, which our encoders write first. The samples are never read."""
    if payload[:4] == b"FLW1":
        return float(_BINARY_TS.unpack_from(payload, 8)[0])
    match = _JSON_TS.search(payload, 0, 200)
    if match is None:
        raise ValueError("no ts in the payload head")
    return float(match.group(1))


def echo(port: int, prefix: str, group: str, name: str) -> None:
    """The ceiling: one receiver of the shared group, answering each window with a small
    QoS 1 alert, no processing. Runs until its stdin closes (the bench's end)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(64)
    seq: dict[str, int] = {}

    def on_message(c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        asset = msg.topic.split("/")[-2]
        seq[asset] = seq.get(asset, 0) + 1
        body = {"window_ts": window_ts(msg.payload), "agent_id": name, "seq": seq[asset]}
        c.publish(f"{prefix}/alerts/{asset}", orjson.dumps(body), qos=1)

    ready = threading.Event()
    client.on_message = on_message
    client.on_subscribe = lambda *_a: ready.set()
    client.on_connect = lambda c, *_a: c.subscribe(
        f"$share/{group}/{prefix}/sensors/+/window", qos=1
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    ready.wait(10)
    print("ready", flush=True)
    sys.stdin.read()
    client.loop_stop()
    client.disconnect()


def start_echoes(port: int, prefix: str, n: int) -> list[subprocess.Popen[str]]:
    """``n`` echo receiver processes on one share group; returns once all subscribed."""
    group = f"echo-{uuid.uuid4().hex[:6]}"
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--echo", f"{port}/{prefix}/{group}/echo-{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise SystemExit("an echo receiver did not subscribe")
    return procs


def stop_echoes(procs: Sequence[subprocess.Popen[str]]) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
    for proc in procs:
        proc.wait(10)


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


MAX_SAMPLES = 480_000  # limits.max_samples by default
MAX_FS = 200_000.0  # limits.max_fs by default


def largest_windows(windows: list[Window]) -> list[Window]:
    """The largest windows the default limits accept: 480,000 samples at 200 kHz (2.4 s),
    made by repeating real CWRU windows; for the memory soak (issue 14), whose subject is
    what the agent holds, not what it concludes."""
    out = []
    for window in windows:
        samples = np.resize(window.samples, MAX_SAMPLES).astype(np.float32)
        out.append(replace(window, samples=samples, fs=MAX_FS, rpm=None))
    return out


def add_window_args(parser: argparse.ArgumentParser, *, windows: int, fmt: str) -> None:
    """--windows, --format and --cwru, which every agent bench takes (defaults per bench)."""
    parser.add_argument("--windows", type=int, default=windows, help="measured windows")
    parser.add_argument("--format", choices=["json", "binary"], default=fmt)
    parser.add_argument("--cwru", default=str(DEFAULT_CWRU))


@dataclass
class Target:
    """One receiver under test: its name, its processes and its topic prefix."""

    name: str
    prefix: str
    groups: dict[str, list[int]]


def measure(
    port: int,
    target: Target,
    windows: list[Window],
    fmt: str,
    outstanding: Sequence[int],
    paced_fraction: float,
) -> dict[str, dict[str, float]]:
    """Warm-up, then closed loop at each depth, then open loop at a fraction of the rate
    sustained at the first depth. Each phase's windows have fresh timestamps."""
    sink = Sink(port, f"{target.prefix}/alerts/+", key="alert")
    cpu = CpuMeter(target.groups)
    used = 0

    def batch(n: int) -> list[tuple[str, float, bytes]]:
        nonlocal used
        chosen = [windows[(used + i) % len(windows)] for i in range(n)]
        out = window_messages(chosen, fmt, target.prefix, first=used)
        used += n
        return out

    phases: dict[str, dict[str, float]] = {}
    try:
        run_phase(port, sink, batch(WARMUP_WINDOWS), 0, outstanding=outstanding[0])
        for depth in outstanding:
            phases[f"closed {depth}"] = run_phase(
                port, sink, batch(len(windows)), 0, outstanding=depth, cpu=cpu
            )
        rate = phases[f"closed {outstanding[0]}"]["rate"] * paced_fraction
        n_paced = max(50, min(len(windows), int(rate * OPEN_LOOP_S)))
        phases[f"open {rate:.0f}/s"] = run_phase(port, sink, batch(n_paced), 1.0 / rate, cpu=cpu)
    finally:
        sink.close()
    return phases


def soak(
    port: int, proc: subprocess.Popen[bytes], windows: list[Window], fmt: str, s: float
) -> None:
    """Open loop at half the agent's closed-loop rate for ``s`` seconds; RSS every 10 s."""
    pids = agent_pids(proc)
    target = Target("agent", "bench", {"agent": pids})
    first = measure(port, target, windows[:500], fmt, [16], 0.5)
    rate = next(iter(first.values()))["rate"] * 0.5
    print(f"soak: {s:.0f} s open loop at {rate:.0f} windows/s; RSS per agent process, MB")
    sink = Sink(port, "bench/alerts/+", key="alert")
    n = int(rate * s)
    msgs = window_messages([windows[i % len(windows)] for i in range(n)], fmt, "bench", 10**6)
    samples: list[list[float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(10.0):
            samples.append([rss_mb(p) for p in pids])
            print(f"  {len(samples) * 10:>5} s  " + "  ".join(f"{v:.0f}" for v in samples[-1]))

    sampler = threading.Thread(target=sample, daemon=True)
    samples.append([rss_mb(p) for p in pids])
    sampler.start()
    stats = run_phase(port, sink, msgs, 1.0 / rate)
    stop.set()
    sampler.join()
    sink.close()
    begin, end = samples[min(1, len(samples) - 1)], samples[-1]
    peak = [max(row[i] for row in samples) for i in range(len(pids))]
    print(
        f"soak: {stats['received']:.0f}/{stats['sent']:.0f} alerts, p99 {stats['p99']:.1f} ms; "
        f"RSS after 10 s {', '.join(f'{v:.0f}' for v in begin)} MB, at the end "
        f"{', '.join(f'{v:.0f}' for v in end)} MB, peak {', '.join(f'{v:.0f}' for v in peak)} MB"
    )


def _row(name: str, phase: str, r: Mapping[str, float]) -> list[str]:
    return [
        name,
        phase,
        f"{r['rate']:.0f}",
        f"{r['p50']:.1f}",
        f"{r['p99']:.1f}",
        f"{r['lost']:.0f}",
        f"{r['duplicates']:.0f}",
        f"{r['order_inversions']:.0f}",
        f"{r.get('cpu_recv', 0):.0f}",
        f"{r.get('cpu_broker', 0):.0f}",
        f"{r.get('cpu_bench', 0):.0f}",
    ]


def report(
    results: dict[str, dict[str, dict[str, float]]],
    outstanding: Sequence[int],
    rss: list[float],
) -> list[str]:
    """The table and the ratios the issue's targets are written in."""
    rows = [_row(name, phase, r) for name, phases in results.items() for phase, r in phases.items()]
    lines = [
        tables.text_table(
            [
                "receiver",
                "phase",
                "win/s",
                "p50 ms",
                "p99 ms",
                "lost",
                "dup",
                "order",
                "recv cpu%",
                "broker %",
                "bench %",
            ],
            rows,
            first=20,
            width=10,
        )
    ]
    ceiling, agent = results["ceiling"], results["agent"]
    for depth in outstanding:
        key = f"closed {depth}"
        lines.append(
            f"ratio agent/ceiling at {depth} outstanding: "
            f"{agent[key]['rate'] / ceiling[key]['rate']:.2f}  (target >= 0.80)"
        )
    c_open = next(v for k, v in ceiling.items() if k.startswith("open"))
    a_open = next(v for k, v in agent.items() if k.startswith("open"))
    lines.append(
        f"half load: agent p50 {a_open['p50']:.1f} ms vs ceiling p50 {c_open['p50']:.1f} ms "
        f"(+{a_open['p50'] - c_open['p50']:.1f} ms, target <= +3); agent p99 "
        f"{a_open['p99']:.1f} ms (target <= 10)"
    )
    lines.append(
        "agent RSS per process after the run: "
        + ", ".join(f"{v:.0f} MB" for v in rss)
        + " (target <= 300, LLM off)"
    )
    return lines


STAGES = (
    ("decode", "decode + validate (network thread)"),
    ("queued", "wait in the pipeline queue"),
    ("diagnose", "diagnose (features, search, decision; batch share)"),
    ("encode", "  of which encode (features, embedding)"),
    ("search", "  of which search (FAISS kNN)"),
    ("decide", "  of which decide (quality, lines, vote, severity)"),
    ("alert", "build the alert, hand it to the outbox"),
    ("publish", "hand a message to paho (sender; per message)"),
    ("received_to_durable", "receipt -> alert committed (whole agent)"),
)


def profile_table(stages: list[dict[str, Any]]) -> str:
    """The hot path's profile: per-window cost of each stage, per agent process, over the
    whole run (warm-up and every phase)."""
    rows = []
    for label_key, label in STAGES:
        cells = [label]
        for proc in stages:
            stage = proc.get(label_key)
            cells.append(
                "-" if stage is None else f"{stage['mean_ms']:.2f} / {stage['p99_ms']:.1f}"
            )
        rows.append(cells)
    columns = ["stage, per window: mean / p99 ms"] + [f"process {i}" for i in range(len(stages))]
    return tables.text_table(columns, rows, first=52, width=16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_window_args(parser, windows=2000, fmt="binary")
    parser.add_argument("--processes", type=int, default=1, help="agent processes / echoes")
    parser.add_argument("--outstanding", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--paced-fraction", type=float, default=0.5)
    parser.add_argument("--soak", type=float, default=0.0, help="seconds of soak instead")
    parser.add_argument(
        "--largest",
        action="store_true",
        help="windows of 480,000 samples at 200 kHz, no rpm (the memory worst case)",
    )
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--echo", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:  # a ceiling receiver process started by this bench
        port, prefix, group, name = args.echo.split("/")
        echo(int(port), prefix, group, name)
        return

    windows = load_windows(cwru_dir(args.cwru), args.windows)
    if args.largest:
        windows = largest_windows(windows[:200])
    size = int(np.mean([len(encode_for_wire(w, args.format)) for w in windows[:50]]))
    print(
        f"payload: {args.format}, {size:,} bytes mean; {len(windows)} one-second windows per "
        f"phase (CWRU records {', '.join(RECORDS)}; 12 and 48 kHz); {args.processes} "
        f"receiver process(es); {os.cpu_count()} cores",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp, MosquittoProcess() as broker:
        port = broker.port
        broker_pids = [broker.pid] if broker.pid else []
        library_root = Path(tmp) / "library"
        build_test_library(cwru_dir(args.cwru), library_root, SpectrumEncoder())
        proc = start_agent(
            port, library_root, "bench", Path(tmp) / "state", processes=args.processes
        )
        try:
            if args.soak > 0:
                soak(port, proc, windows, args.format, args.soak)
                return
            results: dict[str, dict[str, dict[str, float]]] = {}
            echoes = start_echoes(port, "ceil", args.processes)
            try:
                ceiling = Target(
                    "ceiling", "ceil", {"recv": [p.pid for p in echoes], "broker": broker_pids}
                )
                results["ceiling"] = measure(
                    port, ceiling, windows, args.format, args.outstanding, args.paced_fraction
                )
            finally:
                stop_echoes(echoes)
            agent = Target("agent", "bench", {"recv": agent_pids(proc), "broker": broker_pids})
            results["agent"] = measure(
                port, agent, windows, args.format, args.outstanding, args.paced_fraction
            )
            rss = [rss_mb(p) for p in agent_pids(proc)]
            stages = stage_profiles(port, "bench", args.processes)
        finally:
            proc.terminate()
            proc.wait(60)
    lines = report(results, args.outstanding, rss)
    print("\n".join(lines))
    print(profile_table(stages))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "format": args.format,
                    "processes": args.processes,
                    "results": results,
                    "rss_mb": rss,
                    "stages": stages,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
