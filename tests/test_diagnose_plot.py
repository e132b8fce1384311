"""`faultline diagnose FILE --plot OUT.png` on a real CWRU recording: the picture exists,
has the promised size, is not blank, and the JSON output says where it is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faultline.agent.commands.diagnose_plot import PLOT_SIZE_PX
from tests.harness import run_cli
from tests.test_cli import clean_env


@pytest.mark.slow
def test_diagnose_plot_draws_the_evidence_of_a_real_recording(
    cwru_dir: Path, test_library_root: Path, test_library: object, tmp_path: Path
) -> None:
    out = tmp_path / "plots" / "237.png"  # held-out 3 hp outer race; folder made on demand
    result = run_cli(
        "diagnose",
        str(cwru_dir / "12k_drive_end/237.mat"),
        "--json",
        "--plot",
        str(out),
        "--library",
        str(test_library_root),
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    plot = report["plot"]
    assert Path(plot["path"]) == out.resolve()
    assert plot["chosen"] == "most decisive"
    assert plot["window_label"] == report["verdict"]["label"] == "outer_race"
    assert 0 <= plot["window"] < report["windows"]
    assert plot["band"]["bandwidth_hz"] > 0
    image = Image.open(out)
    assert image.format == "PNG"
    assert image.size == PLOT_SIZE_PX
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 20.0  # curves, markers and text, not a blank canvas
    assert (pixels < 128).mean() > 0.01  # enough dark ink for two spectra and the panel


@pytest.mark.slow
def test_diagnose_plot_window_chooses_the_window(
    cwru_dir: Path, test_library_root: Path, test_library: object, tmp_path: Path
) -> None:
    lib = ["--library", str(test_library_root)]
    rec = str(cwru_dir / "12k_drive_end/237.mat")
    out = tmp_path / "w2.png"
    result = run_cli("diagnose", rec, "--json", "--plot", str(out), "--plot-window", "2", *lib)
    assert result.returncode == 0, result.stderr
    plot = json.loads(result.stdout)["plot"]
    assert (plot["window"], plot["chosen"]) == (2, "--plot-window")
    assert out.is_file()
    result = run_cli("diagnose", rec, "--plot", str(out), "--plot-window", "99", *lib)
    assert result.returncode == 2
    assert "--plot-window 99" in result.stderr


def test_diagnose_plot_without_matplotlib_says_how_to_install(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = clean_env(PYTHONPATH=str(shadow.parent))
    result = run_cli("diagnose", "any.wav", "--plot", str(tmp_path / "x.png"), env=env)
    assert result.returncode == 2
    assert "pip install 'faultline[plot]'" in result.stderr
    assert not (tmp_path / "x.png").exists()
