"""Per-asset healthy baselines (issue 5, item 4): enrolling an asset's own healthy windows
makes its later healthy windows `normal` even when the library has no healthy data, without
hiding faults, and only for that asset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from faultline.agent.transport.payloads import encode_window_json
from faultline.encoders.signals import Window
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.builder import build_library
from faultline.fault_library.catalog import ManifestEntry, read_manifest
from faultline.fault_library.diagnosis import DecisionPolicy, diagnose_batch
from faultline.fault_library.library import FaultLibrary, open_current
from faultline.fault_library.recordings import iter_windows, read_recording
from faultline.fault_library.updates import add_recording
from tests.collector import sensor_client

pytestmark = pytest.mark.slow


def _labels(library: FaultLibrary, encoder: SpectrumEncoder, windows: list[Window]) -> Counter[str]:
    results = diagnose_batch(windows, encoder, library, DecisionPolicy())
    return Counter(r.verdict.label for r in results)


def _windows(
    entry: ManifestEntry, asset: str, start_s: float, stop_s: float | None
) -> list[Window]:
    rec = read_recording(entry.path, fs=entry.fs, rpm=entry.rpm)
    return list(iter_windows(rec, asset, window_s=1.0, hop_s=0.25, start_s=start_s, stop_s=stop_s))


def _build(
    cwru_dir: Path,
    tmp_path: Path,
    encoder: SpectrumEncoder,
    include: Callable[[ManifestEntry], bool],
) -> tuple[dict[str, ManifestEntry], Path]:
    """A library of the first 2 s of each CWRU recording ``include`` accepts."""
    entries = {e.record_id: e for e in read_manifest(cwru_dir)}
    root = tmp_path / "library"
    build_library(
        list(entries.values()),
        root,
        encoder,
        include=include,
        segment=lambda e: (0.0, 2.0),
        dataset="CWRU test subset",
        progress=False,
    )
    return entries, root


def _enroll(root: Path, entry: ManifestEntry, encoder: SpectrumEncoder, asset: str) -> None:
    """The first 2.5 s of ``entry`` enrolled as ``asset``'s healthy baseline."""
    add_recording(
        root,
        entry.path,
        encoder,
        label="normal",
        asset=asset,
        fs=entry.fs,
        rpm=entry.rpm,
        start_s=0.0,
        stop_s=2.5,
        hop_s=0.25,
    )


def test_enrolled_baseline_answers_normal_for_its_asset_only_and_keeps_faults(
    cwru_dir: Path, encoder: SpectrumEncoder, tmp_path: Path
) -> None:
    # A library of faults only (0-2 hp, 2 s each): no healthy example at all.
    entries, root = _build(
        cwru_dir,
        tmp_path,
        encoder,
        lambda e: e.label != "normal" and e.fs == 12000 and e.load_hp != 3,
    )
    healthy_later = _windows(entries["97"], "pump", 2.6, None)
    before = _labels(open_current(root), encoder, healthy_later)
    # Nothing healthy to compare with: only absence of damage can say normal (2 windows).
    assert before["normal"] < sum(before.values())

    _enroll(root, entries["97"], encoder, "pump")
    library = open_current(root)
    assert set(library.baselines()) == {"pump"}
    after = _labels(library, encoder, healthy_later)
    print("97 2nd half as pump, before/after enrolment:", dict(before), dict(after))
    assert after["normal"] >= len(healthy_later) - 2  # measured 4 of 6 (v1: 5+)

    # The enrolled windows are ordinary `normal` examples for every asset now, but only
    # the pump is judged against its own baseline (and its alerts say so).
    results = diagnose_batch(healthy_later, encoder, library, DecisionPolicy())
    normal = [r for r in results if r.verdict.label == "normal"]
    assert len(normal) >= len(results) - 2
    assert all("own baseline of pump" in (r.verdict.reason or "") for r in normal)
    other = diagnose_batch(
        [replace(w, asset="fan") for w in healthy_later], encoder, library, DecisionPolicy()
    )
    assert library.baseline("window", "fan") is None
    assert not any("own baseline" in (r.verdict.reason or "") for r in other)

    # A fault on the enrolled asset is still reported as the fault.
    faulty = _windows(entries["108"], "pump", 0.0, 3.0)
    fault_labels = _labels(library, encoder, faulty)
    assert fault_labels["inner_race"] >= len(faulty) - 1, dict(fault_labels)


def test_live_enrolment_over_mqtt_then_list(
    mosquitto_session: object,
    cwru_dir: Path,
    encoder: SpectrumEncoder,
    test_library_root: Path,
    test_library: FaultLibrary,
    tmp_path: Path,
    unique_prefix: str,
) -> None:
    port = mosquitto_session.port  # type: ignore[attr-defined]
    root = tmp_path / "library"
    import shutil

    shutil.copytree(test_library_root, root, symlinks=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTLINE")}
    env.update(
        FAULTLINE__MQTT__PORT=str(port),
        FAULTLINE__TOPICS__PREFIX=unique_prefix,
        FAULTLINE__MQTT__CLIENT_ID=f"enrol-{uuid.uuid4().hex[:6]}",
    )
    cli = [sys.executable, "-m", "faultline.agent.cli", "assets"]
    proc = subprocess.Popen(
        [*cli, "enroll", "press-7", "--minutes", "0.1", "--root", str(root)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    entry = next(e for e in read_manifest(cwru_dir) if e.record_id == "97")
    windows = _windows(entry, "press-7", 2.6, None)
    sensor = sensor_client(port)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            for i, window in enumerate(windows):  # until the enroller has its 6 s
                payload = encode_window_json(replace(window, ts=1.7e9 + time.time() % 1e6 + i))
                sensor.publish(f"{unique_prefix}/sensors/press-7/window", payload, qos=1)
            time.sleep(1.0)
        output, _ = proc.communicate(timeout=60)
    finally:
        sensor.loop_stop()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "enrolled press-7" in output
    listed = subprocess.run(
        [*cli, "list", "--json", "--root", str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assets = json.loads(listed.stdout)["assets"]
    assert assets["press-7"]["windows"] >= 6


def test_lines_overrule_a_baseline_enrolled_with_the_defect_present(
    cwru_dir: Path, encoder: SpectrumEncoder, tmp_path: Path
) -> None:
    """An asset enrolled while its bearing already had an inner-race defect (record 108,
    3 hp, first 2.5 s) would call that defect normal forever; the BPFI lines say otherwise."""
    entries, root = _build(cwru_dir, tmp_path, encoder, lambda e: e.fs == 12000 and e.load_hp != 3)
    _enroll(root, entries["108"], encoder, "press")
    library = open_current(root)
    later = _windows(entries["108"], "press", 3.0, 6.0)
    unchecked = diagnose_batch(later, encoder, library, DecisionPolicy(line_check=False))
    assert Counter(r.verdict.label for r in unchecked)["normal"] >= len(later) - 2
    checked = diagnose_batch(later, encoder, library, DecisionPolicy())
    assert [r.verdict.label for r in checked] == ["inner_race"] * len(later)
    # The BPFI line is cited in every answer; where retrieval already said inner race it
    # is the evidence alone, otherwise the reason says it overruled the baseline.
    assert all("BPFI" in (r.verdict.evidence or "") for r in checked)
    overruled = [r for r in checked if r.verdict.code == "lines"]
    assert overruled
    assert all("instead of normal" in (r.verdict.reason or "") for r in overruled)
