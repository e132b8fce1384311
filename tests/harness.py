"""Building blocks shared by the broker-backed agent tests (not fixtures themselves)."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from faultline.agent.app import Agent
from faultline.agent.settings import Settings, load_settings
from faultline.agent.transport.payloads import encode_window_json
from faultline.encoders.signals import Window
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.builder import build_from_split
from faultline.fault_library.catalog import ManifestEntry, read_manifest
from faultline.fault_library.library import FaultLibrary, open_current
from faultline.fault_library.recordings import iter_windows, read_recording
from tests.collector import sensor_client


def wait_until(predicate: Any, timeout: float, what: str, *, every: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy (returned), or fail naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180.0
) -> subprocess.CompletedProcess[str]:
    """``faultline ARGS`` as a user runs it: a fresh process, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "faultline.agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


# The end-to-end tests replay 3 hp recordings and the second half of the healthy record;
# the library learns from 0-2 hp and the first half only, so nothing replayed is in it.
REPLAY_LOAD_HP = 3
NORMAL_SPLIT_S = 2.5
LIBRARY_SECONDS = 4.0


def library_segment(entry: ManifestEntry) -> tuple[float, float | None] | None:
    if entry.label == "normal":
        return (0.0, NORMAL_SPLIT_S)
    if entry.load_hp == REPLAY_LOAD_HP or entry.fs != 12000:
        return None
    return (0.0, LIBRARY_SECONDS)


def build_test_library(cwru_dir: Path, root: Path, encoder: SpectrumEncoder) -> FaultLibrary:
    entries = read_manifest(cwru_dir)
    build_from_split(
        entries,
        root,
        encoder,
        library_segment,
        dataset="CWRU test split (0-2 hp, 12 kHz; record 97 first half)",
        progress=False,
    )
    return open_current(root, expected_model_id=encoder.model_id)


def agent_settings(port: int, prefix: str, **env: str) -> Settings:
    base = {
        "FAULTLINE__MQTT__HOST": "127.0.0.1",
        "FAULTLINE__MQTT__PORT": str(port),
        "FAULTLINE__MQTT__CLIENT_ID": f"agent-{prefix.replace('/', '-')}",
        "FAULTLINE__MQTT__RECONNECT_MIN_S": "0.1",
        "FAULTLINE__MQTT__RECONNECT_MAX_S": "1",
        "FAULTLINE__TOPICS__PREFIX": prefix,
        # A state folder of its own (outbox, answered windows): nothing leaks between tests.
        "FAULTLINE__DATA_DIR": tempfile.mkdtemp(prefix="faultline-agent-"),
        # Template reports: the model would compete with the alert path for both cores;
        # tests/test_reports.py runs the real model where it is the subject.
        "FAULTLINE__REPORTS__LLM": "false",
    }
    base.update(env)
    return load_settings(None, env=base)


def start_agent(settings: Settings, library: FaultLibrary, encoder: SpectrumEncoder) -> Agent:
    agent = Agent(settings, library, encoder)
    agent.start()
    if not agent.transport.wait_connected(10):
        agent.stop()
        raise AssertionError("agent did not connect to the test broker")
    time.sleep(0.2)  # subscriptions are sent right after CONNACK
    return agent


def record_windows(
    cwru_dir: Path,
    record_id: str,
    asset: str,
    n: int,
    *,
    hop_s: float = 1.0,
    start_s: float = 0.0,
    ts0: float = 0.0,
) -> list[Window]:
    """The first ``n`` one-second windows of a CWRU record, as a sensor on ``asset`` sends."""
    entry = next(e for e in read_manifest(cwru_dir) if e.record_id == record_id)
    recording = read_recording(entry.path, fs=entry.fs, rpm=entry.rpm)
    windows = iter_windows(recording, asset, window_s=1.0, hop_s=hop_s, start_s=start_s, ts0=ts0)
    return list(itertools.islice(windows, n))


def publish_windows(port: int, prefix: str, windows: list[Window]) -> None:
    """Publish JSON windows at QoS 1 as a sensor would, each acknowledged before the next."""
    sensor = sensor_client(port)
    for window in windows:
        topic = f"{prefix}/sensors/{window.asset}/window"
        sensor.publish(topic, encode_window_json(window), qos=1).wait_for_publish(5)
    sensor.loop_stop()


def agent_process_env(
    port: int, prefix: str, library_root: Path, data_dir: Path, **settings: str
) -> dict[str, str]:
    """The environment of a `faultline run` process under test: this machine's environment
    without any FAULTLINE variable of its own, plus the broker, topics, library and state
    folder, plus ``settings`` (``FAULTLINE__...`` names)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTLINE")}
    env.update(
        {
            "FAULTLINE__MQTT__HOST": "127.0.0.1",
            "FAULTLINE__MQTT__PORT": str(port),
            "FAULTLINE__MQTT__CLIENT_ID": f"agent-{prefix.replace('/', '-')}"[:60],
            "FAULTLINE__TOPICS__PREFIX": prefix,
            "FAULTLINE__LIBRARY__PATH": str(library_root),
            "FAULTLINE__PIPELINE__DRAIN_TIMEOUT_S": "20",
            "FAULTLINE__DATA_DIR": str(data_dir),
            "FAULTLINE__REPORTS__LLM": "false",  # see agent_settings
        }
    )
    env.update(settings)
    return env


class AgentProcess:
    """`faultline run` as a separate process, as on a gateway: started, killed, restarted.

    Its output is copied to ``log_path`` by a thread of this process, not written by the
    agent itself: a test may limit the agent's file sizes (a full disk) without its log
    failing first, and a pipe nobody read would block it under a flood of warnings.
    """

    def __init__(self, env: dict[str, str], log_path: Path, args: Sequence[str] = ()) -> None:
        self.env = env
        self.log_path = log_path
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._copier: threading.Thread | None = None

    def start(self) -> AgentProcess:
        self.starts += 1
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "faultline.agent.cli", "run", *self.args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self._copier = threading.Thread(
            target=self._copy, args=(self.proc, self.starts), daemon=True
        )
        self._copier.start()
        return self

    def _copy(self, proc: subprocess.Popen[bytes], start: int) -> None:
        assert proc.stdout is not None
        with self.log_path.open("ab") as log_file:
            log_file.write(f"---- start {start} (pid {proc.pid})\n".encode())
            for line in proc.stdout:
                log_file.write(line)
                log_file.flush()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        """A crash or a power cut: no drain, no offline status, nothing flushed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM as balena sends it; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._copier is not None:
            self._copier.join(10)
        return int(self.proc.returncode)

    def output(self, tail: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-tail:])
