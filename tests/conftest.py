"""Shared fixtures: the CWRU data directory and real MQTT brokers on free loopback ports.

Missing prerequisites fail loudly instead of skipping: CI has both the data and Mosquitto,
so a skip there would hide a broken machine behind a green run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from faultline.agent.transport.broker import MosquittoProcess, find_mosquitto
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.library import FaultLibrary
from tests.harness import build_test_library

REPO_ROOT = Path(__file__).resolve().parents[1]
MOSQUITTO_MISSING = "install mosquitto: apt-get install -y mosquitto"


@pytest.fixture(scope="session")
def cwru_dir() -> Path:
    """CWRU bearing data: $FAULTLINE_CWRU_DIR, else <repo>/../shared/data/cwru."""
    env = os.environ.get("FAULTLINE_CWRU_DIR")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "cwru"
    if not (path / "manifest.csv").is_file():
        pytest.fail(
            f"CWRU data not found at {path} (no manifest.csv); set FAULTLINE_CWRU_DIR "
            "to the directory holding manifest.csv and the .mat files"
        )
    return path


def _require_mosquitto() -> None:
    if find_mosquitto() is None:
        pytest.fail(MOSQUITTO_MISSING)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A fresh Mosquitto (no persistence) for one test; the test may stop/restart it."""
    _require_mosquitto()
    broker = MosquittoProcess(workdir=tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def mosquitto_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoProcess]:
    """One Mosquitto for the whole run, for tests that only need some broker.

    Tests sharing it must keep to their own topics (``unique_prefix``) and must not stop it.
    """
    _require_mosquitto()
    broker = MosquittoProcess(workdir=tmp_path_factory.mktemp("mosquitto-session"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def unique_prefix(request: pytest.FixtureRequest) -> str:
    """A topic prefix no other test (or earlier run on a shared broker) uses."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40]
    return f"t/{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def encoder() -> SpectrumEncoder:
    return SpectrumEncoder()


@pytest.fixture(scope="session")
def test_library_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("library")


@pytest.fixture(scope="session")
def test_library(cwru_dir: Path, test_library_root: Path, encoder: SpectrumEncoder) -> FaultLibrary:
    """A real library from CWRU 0-2 hp (12 kHz) + the first half of record 97.

    Built once per run; the broker-backed tests replay 3 hp records and 97's second half.
    """
    return build_test_library(cwru_dir, test_library_root, encoder)
