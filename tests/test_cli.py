"""The `faultline` verbs as a user runs them: real processes, real files, real broker."""

from __future__ import annotations

import ast
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from faultline.fault_library.recordings import read_recording
from tests.collector import Collector
from tests.harness import run_cli

VERBS = ["run", "demo", "simulate", "diagnose", "check-config"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTLINE")}
    env.update(extra)
    return env


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_explains_itself(verb: str) -> None:
    result = run_cli(verb, "--help")
    assert result.returncode == 0
    assert "usage: faultline " + verb in result.stdout
    assert len(result.stdout) > 300  # a description, not just the usage line


def test_check_config_accepts_the_defaults() -> None:
    default = Path(__file__).resolve().parents[1] / "config" / "default.yaml"
    result = run_cli("check-config", str(default), env=clean_env())
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_diagnose_json_on_mat_npz_wav_with_overrides(
    cwru_dir: Path, test_library_root: Path, test_library: object, tmp_path: Path
) -> None:
    env = clean_env()
    lib = ["--library", str(test_library_root)]
    # A held-out 3 hp outer-race record, straight from the CWRU .mat file.
    result = run_cli("diagnose", str(cwru_dir / "12k_drive_end/237.mat"), "--json", *lib, env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"]["label"] == "outer_race"
    assert 0.5 <= report["verdict"]["confidence"] <= 1.0
    assert report["rpm_source"] == "recording"
    assert report["windows"] == 10
    # The same signal as .npz with explicit geometry keys, and as .wav with flags.
    rec = read_recording(cwru_dir / "12k_drive_end/108.mat", fs=12000)
    npz = tmp_path / "pump.npz"
    np.savez(
        npz,
        signal=rec.signal,
        fs=12000.0,
        rpm=1721.0,
        n_balls=9,
        ball_diameter=0.3126,
        pitch_diameter=1.537,
        contact_angle_deg=0.0,
    )
    result = run_cli("diagnose", str(npz), "--json", "--per-window", *lib, env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"]["label"] == "inner_race"
    assert len(report["per_window"]) == report["windows"]
    assert {"offset_s", "label", "confidence", "neighbours"} <= set(report["per_window"][0])
    wav = tmp_path / "pump.wav"
    wavfile.write(wav, 12000, (rec.signal / np.abs(rec.signal).max()).astype(np.float32))
    result = run_cli(
        "diagnose", str(wav), "--json", "--rpm", "1721", "--bearing", "6205", *lib, env=env
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"]["label"] == "inner_race"
    assert report["rpm_source"] == "argument"
    assert report["bearing"].startswith("SKF 6205")


def test_diagnose_reports_an_unreadable_file_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "broken.csv"
    bad.write_text("value\n1.0\nnan\n")
    result = run_cli("diagnose", str(bad), "--fs", "12000", env=clean_env())
    assert result.returncode == 2
    assert "broken.csv" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "binary", "spectrum"])
def test_simulate_publishes_windows_for_several_assets(
    fmt: str, mosquitto_session: object, cwru_dir: Path, unique_prefix: str
) -> None:
    port = mosquitto_session.port  # type: ignore[attr-defined]
    collector = Collector("127.0.0.1", port, [f"{unique_prefix}/sensors/#"])
    env = clean_env(
        FAULTLINE__MQTT__PORT=str(port),
        FAULTLINE__TOPICS__PREFIX=unique_prefix,
        FAULTLINE__MQTT__CLIENT_ID=f"sim-{fmt}",
    )
    files = [str(cwru_dir / "12k_drive_end/105.mat"), str(cwru_dir / "normal/97.mat")]
    result = run_cli(
        "simulate",
        *files,
        "--asset",
        "fan",
        "--asset",
        "pump",
        "--speed",
        "0",
        "--format",
        fmt,
        "--max-windows",
        "6",
        env=env,
    )
    try:
        assert result.returncode == 0, result.stderr
        kind = "spectrum" if fmt == "spectrum" else "window"
        got = collector.wait_for(lambda t, b: t.endswith(f"/{kind}"), count=6, timeout=20)
    finally:
        collector.close()
    assets = {t.split("/")[-2] for t, _b in got}
    assert assets == {"fan", "pump"}
    if fmt == "json":
        assert all(len(b["samples"]) in {12000, 48000} for _t, b in got)
    if fmt == "spectrum":
        assert all(len(b["magnitude"]) == b["n_fft"] // 2 + 1 for _t, b in got)


@pytest.mark.slow
def test_demo_from_scratch_on_an_embedded_broker(tmp_path: Path) -> None:
    """What a new user sees: library built from the shipped demo set, broker started,
    four held-out machines diagnosed. No ../shared needed (FAULTLINE_CWRU_DIR unset)."""
    env = clean_env(XDG_DATA_HOME=str(tmp_path / "data"), FAULTLINE__MQTT__PORT="1")
    env.pop("FAULTLINE_CWRU_DIR", None)
    started = time.monotonic()
    result = run_cli("demo", "--duration", "8", "--speed", "8", env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "started an embedded" in out
    summary = out[out.index("summary") :]
    expected = {
        "pump-01": "normal",
        "fan-02": "inner_race",
        "conveyor-03": "outer_race",
        "press-04": "ball",
    }
    for asset, label in expected.items():
        line = next(line for line in summary.splitlines() if asset in line)
        counts = ast.literal_eval(line.split(asset, 1)[1].strip())
        assert max(counts, key=counts.get) == label, line
    assert (tmp_path / "data" / "faultline" / "library" / "current").exists()
    assert time.monotonic() - started < 300
