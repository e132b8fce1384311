"""What the long-running verbs print, and where (issue 15, item 5): with ``--json`` stdout
is exactly one JSON object; progress and logs go to stderr; ``--quiet`` draws no progress
and prints at most the result line. Real processes, real CWRU files, real libraries.

Progress bars are drawn when stderr is a terminal (one test gives it a pty) or with
``FAULTLINE_PROGRESS=1`` (the others), never with ``--quiet``.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path
from typing import Any

import pytest

from tests.harness import run_cli
from tests.test_cli import clean_env

BAR = "%|"  # what every tqdm bar draws: "encode recordings:  40%|████      | 4/10"


def loud() -> dict[str, str]:
    return clean_env(FAULTLINE_PROGRESS="1")


def only_json(stdout: str) -> dict[str, Any]:
    """The whole of stdout is one JSON object (json.loads refuses anything around it)."""
    body = json.loads(stdout)
    assert isinstance(body, dict)
    return body


def assert_quiet(result: subprocess.CompletedProcess[str], lines: int = 1) -> None:
    assert result.returncode == 0, result.stderr
    assert BAR not in result.stderr
    assert BAR not in result.stdout
    assert " INFO " not in result.stderr  # --quiet lowers logging to errors
    assert len(result.stdout.splitlines()) == lines, result.stdout


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A library built from the shipped demo set with --json and progress forced."""
    root = tmp_path_factory.mktemp("cli-output") / "library"
    result = run_cli(
        "library", "build", "--from", "demo", "--root", str(root), "--json", env=loud()
    )
    assert result.returncode == 0, result.stderr
    built = only_json(result.stdout)
    assert built["version"]
    assert built["seconds"] > 0
    assert built["built_from"].endswith("demo")
    assert "encode recordings" in result.stderr
    assert BAR in result.stderr
    return root


@pytest.mark.slow
def test_library_build_add_verify_json_and_quiet(demo_root: Path, cwru_dir: Path) -> None:
    root = ["--root", str(demo_root)]
    rec = str(cwru_dir / "12k_drive_end/209.mat")  # 3 hp inner race: not in the demo set
    added = run_cli(
        "library", "add", rec, "--label", "inner_race", "--stop", "3", *root, "--json",
        env=loud(),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    body = only_json(added.stdout)
    assert body["added"] == 2 * body["windows"] > 0
    assert body["label"] == "inner_race"
    verified = run_cli("library", "verify", "--all", *root, "--json", env=loud())
    assert verified.returncode == 0, verified.stderr
    body = only_json(verified.stdout)
    assert body["ok"]
    assert len(body["versions"]) == 2
    assert all(v["ok"] and v["files"] > 0 for v in body["versions"])
    assert_quiet(run_cli("library", "verify", "--all", *root, "--quiet", env=loud()), lines=0)
    rebuilt = run_cli("library", "build", "--from", "demo", *root, "--quiet", env=loud())
    assert_quiet(rebuilt)
    assert rebuilt.stdout.split()[1:] == ["864", "signatures"]
    human = run_cli("library", "verify", *root, env=clean_env())
    assert "ok: version" in human.stdout
    assert "1 of 1 version(s) verified" in human.stdout


@pytest.mark.slow
def test_assets_enroll_and_list_json_and_quiet(demo_root: Path, cwru_dir: Path) -> None:
    root = ["--root", str(demo_root)]
    # The second half of the only healthy CWRU record (48 kHz, 5 s), which the demo
    # library never learned from.
    source = str(cwru_dir / "normal/97.mat")
    enrolled = run_cli(
        "assets", "enroll", "pump-3", "--from", source, "--fs", "48000", "--start", "2.5",
        "--stop", "5", *root,
        "--json", env=loud(),
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stderr
    body = only_json(enrolled.stdout)
    assert body["asset"] == "pump-3"
    assert body["baseline_used"]
    assert body["baseline_windows"] == body["added"] // 2 >= 3
    assert "enrol pump-3" in enrolled.stderr  # the per-file bar
    listed = run_cli("assets", "list", *root, "--json", env=loud())
    assert only_json(listed.stdout)["assets"]["pump-3"]["windows"] == body["baseline_windows"]
    quiet = run_cli(
        "assets", "enroll", "pump-4", "--from", source, "--fs", "48000", "--start", "2.75",
        "--stop", "5", *root,
        "--quiet", env=loud(),
    )  # fmt: skip
    assert_quiet(quiet)
    assert quiet.stdout.startswith("enrolled pump-4:")


@pytest.mark.slow
def test_diagnose_json_quiet_and_progress(
    cwru_dir: Path, test_library_root: Path, test_library: object
) -> None:
    args = (
        "diagnose",
        str(cwru_dir / "12k_drive_end/237.mat"),
        "--library",
        str(test_library_root),
    )
    result = run_cli(*args, "--json", env=loud())
    assert result.returncode == 0, result.stderr
    assert only_json(result.stdout)["verdict"]["label"] == "outer_race"
    assert "diagnose" in result.stderr
    assert BAR in result.stderr
    quiet = run_cli(*args, "--quiet", env=loud())
    assert_quiet(quiet)
    assert quiet.stdout.split()[1:] == ["outer_race", quiet.stdout.split()[2]]
    assert quiet.stderr == ""


@pytest.mark.slow
def test_eval_json_on_stdout_quiet_and_summary(cwru_dir: Path) -> None:
    args = ("eval", str(cwru_dir), "--split", "lofso", "--projection", "none")
    result = run_cli(*args, "--json", env=loud(), timeout=300)
    assert result.returncode == 0, result.stderr
    report = only_json(result.stdout)
    assert [f["fold"] for f in report["splits"]["lofso"]["folds"]] == [
        "0.007 in", "0.014 in", "0.021 in",
    ]  # fmt: skip
    assert "read recordings" in result.stderr
    assert "lofso" in result.stderr
    quiet = run_cli(*args, "--quiet", env=loud(), timeout=300)
    assert_quiet(quiet)
    ba = report["splits"]["lofso"]["summary"]["mean_balanced_accuracy"]
    assert quiet.stdout.startswith(f"eval: lofso {ba:.3f} (")
    human = run_cli(*args, env=clean_env(), timeout=300)
    screen = human.stdout[human.stdout.index("summary: ") :].splitlines()
    assert len(screen) <= 24
    assert any(line.split()[:2] == ["lofso", "3"] for line in screen)


def test_health_json_and_quiet(tmp_path: Path) -> None:
    missing = ["health", "--file", str(tmp_path / "health.json")]
    result = run_cli(*missing, "--json", env=clean_env())
    assert result.returncode == 1
    body = only_json(result.stdout)
    assert body["healthy"] is False
    assert body["file"].endswith("health.json")
    assert body["reason"]
    quiet = run_cli(*missing, "--quiet", env=clean_env())
    assert (quiet.returncode, quiet.stdout) == (1, "")


def test_check_config_json_and_quiet(tmp_path: Path) -> None:
    good = tmp_path / "plant.yaml"
    good.write_text("mqtt: {host: broker.plant}\nassets: {p1: {rpm: 1500}}\n")
    checked = run_cli("check-config", str(good), "--json", env=clean_env())
    assert checked.returncode == 0, checked.stderr
    body = only_json(checked.stdout)
    assert (body["ok"], body["problems"]) == (True, [])
    assert body["broker"]["url"] == "mqtt://broker.plant:1883"
    assert body["assets"] == {"count": 1, "names": ["p1"]}
    quiet = run_cli("check-config", str(good), "--quiet", env=clean_env())
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt:\n  port: 0\n")
    refused = run_cli("check-config", str(bad), "--json", env=clean_env())
    assert refused.returncode == 2
    body = only_json(refused.stdout)
    assert body["ok"] is False
    [problem] = body["problems"]
    assert problem["key"] == "mqtt.port"
    assert problem["given"] == "0"
    assert problem["source"].endswith("bad.yaml line 2")
    quiet = run_cli("check-config", str(bad), "--quiet", env=clean_env())
    assert (quiet.returncode, quiet.stdout) == (2, "")
    assert "mqtt.port" in quiet.stderr  # an error is said even with --quiet


@pytest.mark.slow
def test_library_reshard_and_sign_json_and_quiet(demo_root: Path, tmp_path: Path) -> None:
    library = tmp_path / "library"
    shutil.copytree(demo_root, library, symlinks=True)  # the other tests count its versions
    root = ["--root", str(library)]
    before = only_json(run_cli("library", "info", *root, "--json", env=clean_env()).stdout)
    resharded = run_cli("library", "reshard", "--shards", "3", *root, "--json", env=loud())
    assert resharded.returncode == 0, resharded.stderr
    body = only_json(resharded.stdout)
    assert body["parent"] == before["version"]
    assert body["version"] != body["parent"]
    assert len(body["shards"]) == 3
    assert body["total"] == sum(int(v["count"]) for v in before["views"].values())
    assert 0 < body["moved"] < body["total"]
    assert body["signed_by"] is None
    quiet = run_cli("library", "reshard", "--shards", "4", *root, "--quiet", env=loud())
    assert_quiet(quiet)
    assert "over 4 shard(s)" in quiet.stdout

    made = run_cli("keys", "generate", str(tmp_path / "plant"), env=clean_env())
    assert made.returncode == 0, made.stderr
    key_id = run_cli("keys", "id", str(tmp_path / "plant.pub"), env=clean_env()).stdout.split()[0]
    key = ["--signing-key", str(tmp_path / "plant.key")]
    signed = run_cli("library", "sign", *root, *key, "--json", env=loud())
    assert signed.returncode == 0, signed.stderr
    body = only_json(signed.stdout)
    assert body["signed_by"] == key_id
    assert (library / "versions" / body["version"] / "signature.json").is_file()
    quiet = run_cli("library", "sign", *root, *key, "--version", body["version"], "--quiet")
    assert_quiet(quiet)
    assert quiet.stdout.startswith(f"signed version {body['version']} with key {key_id}")


@pytest.mark.slow
def test_progress_is_drawn_on_a_terminal_and_only_on_stderr(tmp_path: Path) -> None:
    """No FAULTLINE_PROGRESS: stderr is a real terminal (a pty), stdout a pipe."""
    primary, secondary = pty.openpty()
    # A terminal of 40 rows x 120 columns (a new pty has 0 columns: tqdm would draw nothing).
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "faultline.agent.cli", "library", "build", "--from", "demo",
         "--root", str(tmp_path / "lib"), "--json"],
        stdout=subprocess.PIPE,
        stderr=secondary,
        env=clean_env(),
    )  # fmt: skip
    os.close(secondary)
    terminal = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        terminal += chunk
    stdout, _ = proc.communicate(timeout=180)
    os.close(primary)
    assert proc.returncode == 0, terminal.decode(errors="replace")[-2000:]
    assert only_json(stdout.decode())["version"]
    screen = terminal.decode(errors="replace")
    assert "encode recordings" in screen
    assert BAR in screen


@pytest.mark.slow
def test_demo_json_summary_and_progress(tmp_path: Path) -> None:
    """The demo's alerts are the human report: beside --json they go to stderr, and stdout
    is the summary object alone."""
    env = clean_env(
        FAULTLINE_PROGRESS="1", XDG_DATA_HOME=str(tmp_path / "data"), FAULTLINE__MQTT__PORT="1"
    )
    result = run_cli("demo", "--duration", "6", "--speed", "8", "--json", env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = only_json(result.stdout)
    assert set(summary["alerts"]) == {"pump-01", "fan-02", "conveyor-03", "press-04"}
    for asset, label in {"fan-02": "inner_race", "conveyor-03": "outer_race"}.items():
        counts = summary["alerts"][asset]
        assert max(counts, key=counts.get) == label
    assert summary["latency_ms"]["p50"] > 0
    assert "started an embedded" in result.stderr  # the human lines, on stderr
    assert "demo:" in result.stderr  # the bar
    assert BAR in result.stderr
