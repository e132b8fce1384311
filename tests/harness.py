"""Building blocks shared by the broker-backed agent tests (not fixtures themselves)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from faultline.agent.app import Agent
from faultline.agent.settings import Settings, load_settings
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.builder import build_from_split
from faultline.fault_library.catalog import ManifestEntry, read_manifest
from faultline.fault_library.library import FaultLibrary, open_current


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
