"""A running agent switches library versions between batches without failing a window,
and refuses a corrupt version while the loaded one keeps serving (issue 4, item 4)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from faultline.agent.app import Agent
from faultline.agent.transport.payloads import encode_window_binary
from faultline.encoders.signals import Window
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.builder import build_library
from faultline.fault_library.catalog import ManifestEntry, read_manifest
from faultline.fault_library.library import open_current
from faultline.fault_library.recordings import iter_windows, read_recording
from tests.collector import Collector, sensor_client
from tests.harness import agent_settings, library_segment

pytestmark = pytest.mark.slow


def _build(cwru_dir: Path, root: Path, encoder: SpectrumEncoder, seconds: float) -> str:
    def segment(entry: ManifestEntry) -> tuple[float, float | None]:
        start, stop = library_segment(entry) or (0.0, None)
        return (start, min(stop or seconds, seconds))

    build_library(
        read_manifest(cwru_dir),
        root,
        encoder,
        include=lambda e: library_segment(e) is not None,
        segment=segment,
        dataset=f"hot swap test, {seconds} s per record",
        progress=False,
    )
    return open_current(root).version


def test_swap_under_load_answers_every_window_then_refuses_a_corrupt_version(
    mosquitto_session: object,
    cwru_dir: Path,
    encoder: SpectrumEncoder,
    unique_prefix: str,
    tmp_path: Path,
) -> None:
    port = mosquitto_session.port  # type: ignore[attr-defined]
    root = tmp_path / "library"
    v1 = _build(cwru_dir, root, encoder, seconds=2.0)
    settings = agent_settings(port, unique_prefix, FAULTLINE__LIBRARY__WATCH_INTERVAL_S="0.2")
    agent = Agent(settings, open_current(root), encoder, library_root=root)
    agent.start()
    assert agent.transport.wait_connected(10)
    collector = Collector("127.0.0.1", port, [f"{unique_prefix}/#"])
    sensor = sensor_client(port)
    entry = next(e for e in read_manifest(cwru_dir) if e.record_id == "200")
    recording = read_recording(entry.path, fs=entry.fs, rpm=entry.rpm)
    pool = list(iter_windows(recording, "m", window_s=1.0, hop_s=0.05, ts0=1.7e9))
    stop_sending = threading.Event()
    swapped = threading.Event()
    windows: list[Window] = []  # what was sent

    def send() -> None:
        """40 windows/s until 40 windows after the swap was seen: however long the build of
        v2 takes on a loaded machine, windows flow before, during and after it."""
        after_swap = 0
        for i in range(len(pool) * 4):
            window = dataclasses.replace(pool[i % len(pool)], ts=1.7e9 + i * 0.05)
            if stop_sending.is_set() or after_swap >= 40:
                return
            after_swap += swapped.is_set()
            topic = agent.topics.window("m")
            sensor.publish(topic, encode_window_binary(window), qos=1).wait_for_publish(5)
            windows.append(window)
            time.sleep(0.025)

    sender = threading.Thread(target=send)
    try:
        sender.start()
        collector.wait_for(lambda t, b: "/alerts/" in t, count=10, timeout=30)
        v2 = _build(cwru_dir, root, encoder, seconds=3.0)  # publish while windows flow
        assert v2 != v1
        collector.wait_for(
            lambda t, b: "/alerts/" in t and b.get("library_version") == v2, timeout=60
        )
        swapped.set()
        sender.join(timeout=120)
        alerts = collector.wait_for(lambda t, b: "/alerts/" in t, count=len(windows), timeout=60)
        versions = [b["library_version"] for _t, b in sorted(alerts, key=lambda a: a[1]["seq"])]
        # Every window answered, none failed; the swap happened mid-stream, once, for good.
        assert sorted(b["window_ts"] for _t, b in alerts) == [w.ts for w in windows]
        assert versions[0] == v1
        assert versions[-1] == v2
        # With several workers, a batch taken just before the swap may finish just after
        # one taken after it; beyond that overlap every alert comes from v2.
        switch = versions.index(v2)
        overlap = (settings.pipeline.workers - 1) * settings.pipeline.batch_max
        assert set(versions[switch + overlap :]) == {v2}
        assert set(versions) == {v1, v2}
        assert not [b for t, b in collector.messages if t.endswith("/errors")]
        status = collector.wait_for(
            lambda t, b: "/status/" in t and b.get("library", {}).get("version") == v2
        )
        assert status

        # A version that fails verification is refused; v2 keeps serving. Forge one the
        # way a bad copy or a dying SD card would: a flipped byte, then `current` moved.
        forged = root / "versions" / "forged-corrupt"
        shutil.copytree(root / "versions" / v2, forged)
        index_file = next(forged.rglob("index-window*"))
        data = bytearray(index_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        index_file.write_bytes(bytes(data))
        link = root / "current.forging"
        link.symlink_to(Path("versions") / forged.name)
        link.replace(root / "current")
        [(_t, error)] = collector.wait_for(
            lambda t, b: t.endswith("/errors") and b.get("code") == "library_refused", timeout=20
        )
        assert "forged-corrupt" in error["reason"]
        assert "sha256" in error["reason"]
        # Operators can ask for a re-check and a fresh status over MQTT; a typo is reported.
        for command in ("reload_library", "status", "bogus"):
            payload = json.dumps({"command": command})
            sensor.publish(agent.topics.commands[1], payload, qos=1).wait_for_publish(5)
        [(_t, error)] = collector.wait_for(
            lambda t, b: t.endswith("/errors") and b.get("code") == "unknown_command", timeout=20
        )
        assert "reload_library" in error["reason"]
        # A new window (a repeated one would be answered once, by its first alert).
        fresh = dataclasses.replace(windows[0], ts=windows[-1].ts + 60.0)
        sensor.publish(agent.topics.window("m"), encode_window_binary(fresh), qos=1)
        late = collector.wait_for(lambda t, b: "/alerts/" in t, count=len(windows) + 1)
        assert sorted(late, key=lambda a: a[1]["seq"])[-1][1]["library_version"] == v2
        assert agent.counters.get("library_swaps") == 1
    finally:
        stop_sending.set()
        sender.join(timeout=10)
        sensor.loop_stop()
        collector.close()
        agent.stop()
