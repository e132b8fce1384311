"""What the durable outbox costs (issue 10): throughput on vs off, backlog replay, disk size.

Measured in one run, against one Mosquitto this script starts on a free loopback port:

1. **Throughput, outbox on vs off.** The agent runs as a separate ``faultline run`` process
   (bench/e2e.py's machinery); this process publishes CWRU windows in a closed loop with
   16 windows outstanding (a new one only when an alert has come back), so the rate is what
   the agent sustains, not how deep its queues are. "On" is the shipped default: every
   alert committed to SQLite (WAL, synchronous=FULL, group commit) before the window is
   acknowledged. "Off" is ``FAULTLINE__OUTBOX__ENABLED=false``: the *same* outbox threads
   and group-commit wait, holding messages in memory only (no file, no fsync), so the ratio
   is the price of the disk alone. Runs alternate on/off/off/on (ABBA) so a drifting machine
   load biases neither side.
2. **Replay of a backlog.** 100,000 alert-sized messages (real alert payloads captured in
   step 1, re-numbered, with the agent's derived message ids) are written to an outbox file
   while no broker link exists; then a fresh process opens that file, as an agent does after
   a reboot, with an ``MqttTransport`` to the broker, and replays it until a subscriber here
   has every message and the backlog is empty. Unpaced (``replay_rate 0``) over the whole
   backlog, and at the default pace over a bounded time on a copy of the same file. The
   replayer is its own process so the subscriber does not share its interpreter lock.
3. **Disk.** File + WAL sampled every 20 ms while filling and replaying (the peak), after
   the fill, and after the backlog drained; and how long one group commit takes on that
   disk, the figure that moves the on/off ratio from one machine to another (a VM's disk
   syncs in a fraction of a millisecond, a gateway's SD card or eMMC may take tens).

    python bench/outbox.py [--windows 1500] [--rounds 1] [--format binary|json]
        [--backlog 100000] [--paced-seconds 15] [--cwru ../shared/data/cwru] [--workdir DIR]

About 2 minutes on 2 cores at the defaults; ``--windows 300 --backlog 10000`` for a quick look.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import tables
from bench.e2e import (
    Sink,
    add_window_args,
    cwru_dir,
    load_windows,
    run_phase,
    start_agent,
    window_messages,
)
from faultline.agent.app import outbox_from_settings, transport_from_settings
from faultline.agent.outbox.store import NewRow, open_store
from faultline.agent.settings import Settings, load_settings
from faultline.agent.transport.broker import MosquittoProcess
from faultline.agent.transport.payloads import alert_message_id, answered_key
from faultline.encoders.spectrum import SpectrumEncoder
from tests.harness import build_test_library

OUTSTANDING = 16
WARMUP_WINDOWS = 100  # per agent start: caches, first batches; not counted
REPLAY_TARGET = 2000.0  # messages/s on 2 cores (issue 10)
THROUGHPUT_TARGET = 0.9  # on/off (issue 10)
LOOPBACK_MAX = 20_000  # broker ceiling for the replay: a rate, it needs no full backlog
SAMPLE_EVERY_S = 0.02
MODES = {"on": "true", "off": "false"}


# ---------------------------------------------------------------- 1. throughput on vs off


@dataclass
class AgentRun:
    """One agent process's measured phase, and what its outbox said about itself."""

    mode: str
    stats: dict[str, float]
    outbox: dict[str, Any]
    file_bytes: int


def agent_status(port: int, prefix: str, timeout: float = 10.0) -> dict[str, Any]:
    """A fresh status from the agent (the ``status`` command), not the retained one.

    Its ``outbox`` block says which mode really ran ("disk" or "memory") and what it counted.
    """
    got: list[dict[str, Any]] = []
    fresh = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.retain:  # the retained copy is from connect time
            got.append(json.loads(msg.payload))
            fresh.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=uuid.uuid4().hex[:8])
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_connect = lambda c, *_a: c.subscribe(f"{prefix}/status/+", qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        subscribed.wait(timeout)
        client.publish(f"{prefix}/commands/all", json.dumps({"command": "status"}), qos=1)
        fresh.wait(timeout)
    finally:
        client.loop_stop()
        client.disconnect()
    return got[-1] if got else {}


def disk_bytes(path: Path) -> int:
    """An SQLite file and its WAL, as they are on disk now (0 for what does not exist)."""
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            total += Path(f"{path}{suffix}").stat().st_size
    return total


def run_agent(
    port: int,
    library_root: Path,
    workdir: Path,
    mode: str,
    tag: str,
    windows: list[Any],
    fmt: str,
) -> tuple[AgentRun, list[bytes], list[int]]:
    """Start an agent with the outbox ``mode``, warm it up, measure one closed-loop phase.

    Each run has its own topic prefix and state folder: a stopped agent's broker session
    (kept for an hour) must not queue the next run's windows, and its answered-window
    memory must not take them for duplicates.
    """
    prefix = f"ob-{tag}"
    data_dir = workdir / prefix
    messages = window_messages(windows, fmt, prefix)
    warm, measured = messages[:WARMUP_WINDOWS], messages[WARMUP_WINDOWS:]
    proc = start_agent(
        port, library_root, prefix, data_dir, {"FAULTLINE__OUTBOX__ENABLED": MODES[mode]}
    )
    sink = Sink(port, f"{prefix}/alerts/+", key="alert")
    try:
        run_phase(port, sink, warm, interval_s=0, outstanding=OUTSTANDING)
        stats = run_phase(port, sink, measured, interval_s=0, outstanding=OUTSTANDING)
        status = agent_status(port, prefix)
        sizes = list(sink.sizes)
        samples = list(sink.samples)
    finally:
        sink.close()
        proc.terminate()
        proc.wait(60)
    run = AgentRun(mode, stats, status.get("outbox", {}), disk_bytes(data_dir / "outbox.sqlite"))
    return run, samples, sizes


# ---------------------------------------------------------------- 2. the backlog


def backlog_settings(path: Path, replay_rate: float | None = None, port: int = 1) -> Settings:
    """The agent's own outbox and MQTT configuration, pointed at ``path``.

    ``FAULTLINE__*`` variables of this process apply, as they do to the agent runs (e.g.
    ``FAULTLINE__OUTBOX__SYNCHRONOUS=normal`` to see what full costs).
    """
    env = {
        **os.environ,
        "FAULTLINE__OUTBOX__PATH": str(path),
        "FAULTLINE__MQTT__HOST": "127.0.0.1",
        "FAULTLINE__MQTT__PORT": str(port),
    }
    if replay_rate is not None:
        env["FAULTLINE__OUTBOX__REPLAY_RATE"] = str(replay_rate)
    return load_settings(None, env=env)


class DiskSampler:
    """Largest file + WAL seen while a step runs (the WAL grows between checkpoints)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.peak = 0
        self.peak_wal = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self._sample()

    def _sample(self) -> None:
        self.peak = max(self.peak, disk_bytes(self.path))
        with contextlib.suppress(OSError):
            self.peak_wal = max(self.peak_wal, Path(f"{self.path}-wal").stat().st_size)

    @contextlib.contextmanager
    def running(self) -> Iterator[DiskSampler]:
        self._stop.clear()
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()
            self._sample()


class AlertFactory:
    """Alerts as the agent writes them: real payloads re-numbered, one per window key.

    Message ids and answered keys are derived exactly as the agent derives them (gateway +
    window + library version), so the file's unique index sees the same random-looking ids.
    """

    def __init__(self, samples: list[bytes], prefix: str, agent_id: str) -> None:
        self.templates = [json.loads(s) for s in samples]
        self.prefix = prefix
        self.agent_id = agent_id

    def message(self, i: int) -> tuple[str, str, str, Callable[[int], bytes], str]:
        """(asset, topic, message id, payload builder, answered key) of the ``i``-th alert."""
        body = self.templates[i % len(self.templates)]
        asset = str(body["asset"])
        ts = 1.8e9 + i * 0.001
        key = answered_key("window", asset, ts)
        msg_id = alert_message_id(self.agent_id, key, str(body["library_version"]))

        def build(seq: int) -> bytes:
            out = {**body, "window_ts": ts, "seq": seq, "message_id": msg_id}
            out["agent_id"] = self.agent_id
            out["emitted_at"] = time.time()
            return json.dumps(out, separators=(",", ":")).encode()

        return asset, f"{self.prefix}/alerts/{asset}", msg_id, build, key


@dataclass
class FillResult:
    n: int
    seconds: float
    closed_bytes: int  # file after the outbox closed (WAL checkpointed into it)


def fill_backlog(path: Path, factory: AlertFactory, n: int, sampler: DiskSampler) -> FillResult:
    """``n`` alerts into an outbox with no link, through ``put`` as the agent does."""
    faults: list[tuple[str, str]] = []
    outbox = outbox_from_settings(backlog_settings(path), lambda c, r: faults.append((c, r)))
    outbox.start()
    with sampler.running():
        start = time.monotonic()
        for i in range(n):
            asset, topic, msg_id, build, key = factory.message(i)
            outbox.put("alert", asset, topic, build, msg_id, answers=key)
        while outbox.stats()["depth"] != n:
            if faults:
                raise SystemExit(f"outbox fault while filling: {faults}")
            time.sleep(SAMPLE_EVERY_S)
        seconds = time.monotonic() - start
        left = outbox.stop(1.0)
    if left != n:
        raise SystemExit(f"filled outbox holds {left} messages, expected {n}")
    return FillResult(n, seconds, disk_bytes(path))


def replay_worker(
    path: str, port: int, replay_rate: float, limit_s: float, conn: Connection
) -> None:
    """The child process: open the filled outbox as a restarted agent would, and replay it.

    Reports (monotonic clock, shared by the processes on Linux) when the link came up, when
    the backlog was empty (every message PUBACKed) or the time limit hit, and the file's
    size then and after closing.
    """
    settings = backlog_settings(Path(path), replay_rate, port)
    faults: list[tuple[str, str]] = []
    began = time.monotonic()
    outbox = outbox_from_settings(settings, lambda c, r: faults.append((c, r)))
    loaded_s = time.monotonic() - began
    depth0 = cast(int, outbox.stats()["depth"])
    transport = transport_from_settings(
        settings,
        client_id=f"bench-replayer-{uuid.uuid4().hex[:6]}",
        status_topic=f"ob-replay/status/{uuid.uuid4().hex[:6]}",
        status_online=dict,
        on_message=lambda _m: None,
        on_connection_change=outbox.link_changed,
        on_published=outbox.published,
    )
    # As the agent's _send: QoS 1, JSON; the PUBACK deletes the row.
    outbox.attach(partial(transport.publish, qos=1, content_type="application/json"))
    outbox.start()
    transport.start()
    if not transport.wait_connected(10):
        conn.send({"error": "replayer did not connect"})
        return
    up = time.monotonic()
    while True:
        stats = outbox.stats()
        now = time.monotonic()
        if stats["depth"] == 0 or (limit_s > 0 and now - up >= limit_s):
            break
        time.sleep(SAMPLE_EVERY_S)
    delivered = sum(cast(dict[str, int], stats["delivered"]).values())
    open_bytes = disk_bytes(Path(path))
    left = outbox.stop(5.0 if limit_s <= 0 else 0.5)
    transport.stop()
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        answered = db.execute("SELECT count(*) FROM answered").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        page = db.execute("PRAGMA page_size").fetchone()[0]
    conn.send(
        {
            "loaded_s": loaded_s,
            "depth0": depth0,
            "up": up,
            "end": now,
            "delivered": delivered,
            "replayed": stats["replayed"],
            "left": left,
            "rows_in_file": rows,
            "answered_in_file": answered,
            "free_bytes": free * page,
            "open_bytes": open_bytes,
            "closed_bytes": disk_bytes(Path(path)),
            "faults": faults,
        }
    )


@dataclass
class ReplayResult:
    rate_setting: float
    report: dict[str, Any]
    received: int
    last_arrival: float
    rate: float = field(init=False)

    def __post_init__(self) -> None:
        # Until the later of: the subscriber had the last message, the backlog was empty.
        end = self.report["end"]
        if self.received >= self.report["depth0"]:
            end = max(end, self.last_arrival)
        self.rate = self.report["delivered"] / (end - self.report["up"])


def replay(
    path: Path, port: int, prefix: str, replay_rate: float, limit_s: float, sampler: DiskSampler
) -> ReplayResult:
    """Replay ``path`` in a child process; this process is the subscriber that counts."""
    sink = Sink(port, f"{prefix}/alerts/+", key="alert")
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=replay_worker, args=(str(path), port, replay_rate, limit_s, child))
    try:
        with sampler.running():
            sink.expect(backlog_rows(path))
            proc.start()
            report: dict[str, Any] = parent.recv()
            if "error" in report:
                raise SystemExit(report["error"])
            if limit_s <= 0:
                sink.done.wait(60)
        proc.join(60)
    finally:
        sink.close()
        if proc.is_alive():
            proc.kill()
    last = max(sink.arrivals.values(), default=report["up"])
    return ReplayResult(replay_rate, report, len(sink.arrivals), last)


def backlog_rows(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])


def copy_outbox(src: Path, dst: Path) -> None:
    """A closed outbox is one file (SQLite folds the WAL in at the last close)."""
    for suffix in ("", "-wal"):
        if Path(f"{src}{suffix}").exists():
            shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")


def commit_ms(folder: Path, payload: bytes, commits: int = 200) -> tuple[float, float]:
    """p50 and p99 of one group commit of ``OUTSTANDING`` alerts, through the outbox's store.

    The store's own ``write`` with the default pragmas (WAL, synchronous=FULL) on the disk
    the bench uses: the fsync the outbox pays per group, whatever else the machine does.
    """
    path = folder / "commit-probe.sqlite"
    opened = open_store(path, "full")
    times = []
    try:
        for c in range(commits):
            rows = [
                NewRow(f"probe-{c}-{i}", "alert", "alert:a", i, "t", payload, False, 0, 1, None)
                for i in range(OUTSTANDING)
            ]
            start = time.perf_counter()
            opened.store.write(rows, [], {})
            times.append((time.perf_counter() - start) * 1000)
    finally:
        opened.store.close()
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


# ---------------------------------------------------------------- report


def filesystem(path: Path) -> str:
    """The mount a path is on, and its type: tmpfs would make every fsync free."""
    best = ("?", "?")
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            _dev, mount, fstype, *_ = line.split()
            inside = str(path.resolve()).startswith(mount.rstrip("/") + "/") or mount == "/"
            if inside and len(mount) >= len(best[0].replace("?", "")):
                best = (mount, fstype)
    return f"{best[1]} at {best[0]}"


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def per_100k(n: float, rows: int) -> str:
    return mb(n * 100_000 / rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_window_args(parser, windows=1500, fmt="binary")
    parser.add_argument("--rounds", type=int, default=1, help="on/off/off/on blocks")
    parser.add_argument("--backlog", type=int, default=100_000, help="messages to replay")
    parser.add_argument(
        "--paced-seconds",
        type=float,
        default=15.0,
        help="how long to replay at the default pace (0: the whole backlog)",
    )
    parser.add_argument(
        "--workdir", default=None, help="where outbox files go (default: a temp folder)"
    )
    args = parser.parse_args()
    began = time.monotonic()

    cwru = cwru_dir(args.cwru)
    windows = load_windows(cwru, WARMUP_WINDOWS + args.windows)
    order = ["on", "off", "off", "on"] * args.rounds
    default_rate = Settings().outbox.replay_rate

    with (
        tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-outbox-") as tmp,
        MosquittoProcess() as broker,
    ):
        workdir = Path(tmp)
        library_root = workdir / "library"
        build_test_library(cwru, library_root, SpectrumEncoder())
        runs: list[AgentRun] = []
        samples: list[bytes] = []
        sizes: list[int] = []
        for i, mode in enumerate(order):
            run, got, got_sizes = run_agent(
                broker.port, library_root, workdir, mode, f"{i}{mode}", windows, args.format
            )
            runs.append(run)
            samples += got
            sizes += got_sizes
            print(f"  agent outbox {mode}: {run.stats['rate']:.1f} windows/s", flush=True)

        # The replay's ceiling: the same alert payloads through the broker, no outbox.
        factory = AlertFactory(samples, "ob-replay", "bench-gateway")
        n_loop = min(args.backlog, LOOPBACK_MAX)
        loop_msgs = []
        for i in range(n_loop):
            payload = factory.message(i)[3](1)
            loop_msgs.append((f"ob-loop/{i}", float(i), payload))
        loop_sink = Sink(broker.port, "ob-loop/+", key="loop")
        loopback = run_phase(broker.port, loop_sink, loop_msgs, interval_s=0)
        loop_sink.close()

        path = workdir / "backlog" / "outbox.sqlite"
        sampler = DiskSampler(path)
        fill = fill_backlog(path, factory, args.backlog, sampler)
        print(f"  backlog of {fill.n:,} written in {fill.seconds:.1f} s", flush=True)
        paced_path = workdir / "paced" / "outbox.sqlite"
        paced_path.parent.mkdir()
        copy_outbox(path, paced_path)
        unpaced = replay(path, broker.port, "ob-replay", 0.0, 0.0, sampler)
        print(f"  unpaced replay: {unpaced.rate:,.0f} msgs/s", flush=True)
        paced = replay(
            paced_path,
            broker.port,
            "ob-replay",
            default_rate,
            args.paced_seconds,
            DiskSampler(paced_path),
        )
        fs = filesystem(workdir)
        commit_p50, commit_p99 = commit_ms(workdir, samples[0])

    on = [r for r in runs if r.mode == "on"]
    off = [r for r in runs if r.mode == "off"]
    on_rate = float(np.mean([r.stats["rate"] for r in on]))
    off_rate = float(np.mean([r.stats["rate"] for r in off]))
    ratio = on_rate / off_rate
    alert_size = float(np.mean(sizes)) if sizes else float("nan")
    rows = fill.n
    report = unpaced.report

    print()
    print(
        f"outbox bench: {args.format} windows, {args.windows} measured per run after "
        f"{WARMUP_WINDOWS} warm-up, closed loop {OUTSTANDING} outstanding, "
        f"{os.cpu_count()} cores, outbox files on {fs}; {time.monotonic() - began:.0f} s"
    )
    print(
        "on  = outbox.enabled true (default): SQLite WAL, synchronous=FULL, group commit; a "
        "window is acked once its alert is durable\noff = FAULTLINE__OUTBOX__ENABLED=false: "
        "the same outbox threads and commit wait, memory only (no file, no fsync, lost on "
        "restart)"
    )
    print(
        tables.text_table(
            ["agent run", "win/s", "p50 ms", "p99 ms", "recv/sent", "mode", "outbox"],
            [
                [
                    f"{i + 1}. outbox {r.mode}",
                    f"{r.stats['rate']:.1f}",
                    f"{r.stats['p50']:.1f}",
                    f"{r.stats['p99']:.1f}",
                    f"{r.stats['received']:.0f}/{r.stats['sent']:.0f}",
                    str(r.outbox.get("mode", "?")),
                    mb(r.file_bytes) if r.file_bytes else "-",
                ]
                for i, r in enumerate(runs)
            ],
            first=16,
            width=11,
        )
    )
    print(
        f"alert payloads: {alert_size:,.0f} bytes mean (real alerts from the runs above, "
        f"reused for the backlog)"
    )
    print()
    replay_rows = [
        [
            "throughput on/off",
            f"{on_rate:.1f}/{off_rate:.1f}",
            "win/s",
            f"{ratio:.2f}x",
            f">= {THROUGHPUT_TARGET}x",
            f"{ratio / THROUGHPUT_TARGET:.2f}",
        ],
        [
            "broker loopback (ceiling)",
            f"{loopback['rate']:,.0f}",
            "msg/s",
            "1.00x",
            f"{REPLAY_TARGET:,.0f}/s",
            f"{loopback['rate'] / REPLAY_TARGET:.2f}",
        ],
    ]
    for name, result in (
        ("replay unpaced (rate 0)", unpaced),
        (f"replay paced (rate {default_rate:.0f})", paced),
    ):
        replay_rows.append(
            [
                name,
                f"{result.rate:,.0f}",
                "msg/s",
                f"{result.rate / loopback['rate']:.2f}x",
                f"{REPLAY_TARGET:,.0f}/s",
                f"{result.rate / REPLAY_TARGET:.2f}",
            ]
        )
    print(
        tables.text_table(
            ["measure", "value", "unit", "vs base", "target", "/target"],
            replay_rows,
            first=28,
            width=12,
        )
    )
    print(
        f"replay: {report['depth0']:,} messages loaded from the file in "
        f"{report['loaded_s']:.2f} s; unpaced {unpaced.received:,} received, "
        f"{report['replayed']:,} marked replay, {report['rows_in_file']} rows left in the "
        f"file; paced {paced.report['delivered']:,} in "
        f"{paced.report['end'] - paced.report['up']:.1f} s (at that pace {rows:,} take "
        f"{rows / default_rate:.0f} s)"
    )
    print(
        f"fill: {rows:,} alerts durable in {fill.seconds:.1f} s "
        f"({rows / fill.seconds:,.0f} msgs/s through put + group commit, no link)"
    )
    print()
    print(
        tables.text_table(
            ["outbox on disk", "bytes", "at 100,000"],
            [
                ["peak, file + WAL", mb(sampler.peak), per_100k(sampler.peak, rows)],
                ["peak WAL alone", mb(sampler.peak_wal), per_100k(sampler.peak_wal, rows)],
                ["filled, closed", mb(fill.closed_bytes), per_100k(fill.closed_bytes, rows)],
                ["drained, open", mb(report["open_bytes"]), per_100k(report["open_bytes"], rows)],
                [
                    "drained, closed",
                    mb(report["closed_bytes"]),
                    per_100k(report["closed_bytes"], rows),
                ],
                [
                    "  of it free pages",
                    mb(report["free_bytes"]),
                    per_100k(report["free_bytes"], rows),
                ],
            ],
            first=22,
            width=12,
        )
    )
    print(
        f"one group commit of {OUTSTANDING} alerts on this disk (synchronous=full): "
        f"p50 {commit_p50:.2f} ms, p99 {commit_p99:.2f} ms"
    )
    print(
        f"payload bytes: {rows * alert_size / 1e6:.1f} MB for {rows:,} alerts; after draining "
        f"the file still holds {report['answered_in_file']:,} answered-window keys "
        f"(kept {Settings().outbox.answered_retention_s / 86400:.0f} days) and free pages "
        f"(a running agent gives them back at up to 16 MiB a minute, with its once-a-minute "
        f"prune: longer than this drain)"
    )
    for name, result in (("unpaced", unpaced), ("paced", paced)):
        if result.report["faults"]:
            print(f"outbox faults during the {name} replay: {result.report['faults']}")


if __name__ == "__main__":
    main()
