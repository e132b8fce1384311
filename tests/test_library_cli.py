"""``faultline library ...`` as an engineer runs it, bad input, a full disk, and reloads.

Real processes, real CWRU recordings, real SQLite/FAISS files. The disk really fills: the
build runs in a subprocess whose file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored) makes the
kernel fail its writes with EFBIG, and - where this machine lets root mount - on a 256 KiB
tmpfs that runs out of space (ENOSPC).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from faultline.agent.cli import main
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.builder import LibraryBuildError, build_library
from faultline.fault_library.catalog import read_manifest
from faultline.fault_library.library import (
    current_version,
    list_versions,
    open_current,
    publish_version,
    reload_if_changed,
)
from faultline.fault_library.versions import new_build_dir
from faultline.fault_library.writer import write_version
from tests.harness import run_cli

RECORDS = ("97", "105", "118", "130", "106")  # 106 (1 hp) is left out by --exclude-load 1
SUBVERBS = ["build", "add", "info", "verify", "search", "reshard"]


def faultline(root: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it: a fresh process, settings from the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTLINE")}
    env["FAULTLINE__LIBRARY__PATH"] = str(root)
    return run_cli(*args, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def data_dir(cwru_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CWRU-style folder: manifest.csv naming five of the shared .mat files."""
    out = tmp_path_factory.mktemp("cwru-subset")
    with (cwru_dir / "manifest.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = [r for r in reader if r["record_id"] in RECORDS]
    for row in rows:
        row["path"] = str(cwru_dir / row["path"])
    with (out / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return out


@pytest.fixture(scope="module")
def built(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A library root built once through the CLI: 2 shards, 2 s per recording."""
    root = tmp_path_factory.mktemp("cli-library")
    result = faultline(
        root, "library", "build", "--from", str(data_dir), "--shards", "2",
        "--max-seconds", "2", "--exclude-load", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "built library version" in result.stdout
    return root


def in_process(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, str, str]:
    """The same ``main`` in this process (no ~2 s interpreter start) for the lesser checks."""
    monkeypatch.setenv("FAULTLINE__LIBRARY__PATH", str(root))
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _copy(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "library"
    shutil.copytree(root, out, symlinks=True)
    return out


def _no_build_leftovers(root: Path) -> bool:
    return not [p for p in (root / "versions").iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("verb", SUBVERBS)
def test_every_library_subverb_explains_itself(
    verb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["library", verb, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: faultline library {verb}" in out
    assert len(out) > 400  # a description, not just the usage line
    assert "exit status" in out


@pytest.mark.slow
def test_build_info_verify_search(
    built: Path,
    cwru_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    info = json.loads(faultline(built, "library", "info", "--json").stdout)
    assert info["version"] == current_version(built)
    assert info["root"] == str(built)
    assert info["encoder_matches"] is True
    assert info["sharding"]["shards"] == ["shard-00", "shard-01"]
    for view in ("window", "spectrum"):
        spec = info["views"][view]
        # 4 recordings (106 excluded) x 2 s in 1 s windows with 0.5 s hop: 3 windows each
        assert spec["label_counts"] == {"ball": 3, "inner_race": 3, "normal": 3, "outer_race": 3}
        assert spec["kind"] == "exact"
        assert "below the IVF-PQ training threshold" in spec["index"]
        per_shard = [info["shards"][s]["views"][view]["count"] for s in ("shard-00", "shard-01")]
        assert sum(per_shard) == 12
    assert "106" not in {r["record_id"] for r in info["source"]["recordings"]}
    _, text, _ = in_process(built, capsys, monkeypatch, "library", "info")
    assert "exact (FlatIP)" in text
    assert "shard-01:" in text

    verified = faultline(built, "library", "verify")
    assert verified.returncode == 0, verified.stderr
    assert f"ok: version {info['version']}: 10 files" in verified.stdout

    # a library window finds itself first, with its row cited
    found = faultline(
        built, "library", "search", str(cwru_dir / "12k_drive_end" / "105.mat"),
        "--start", "0.5", "--k", "3", "--json",
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    [window] = json.loads(found.stdout)["windows"]
    top = window["neighbours"][0]
    assert top["score"] > 0.9999
    assert top["label"] == "inner_race"
    assert "record 105, window at 0.5 s" in top["description"]
    assert len(window["neighbours"]) == 3

    args = ("library", "search", "--text", "outer race", "--k", "50", "--json")
    _, texts, _ = in_process(built, capsys, monkeypatch, *args)
    matches = json.loads(texts)["matches"]
    assert len(matches) == 6  # 3 windows x 2 views
    assert {m["label"] for m in matches} == {"outer_race"}
    code, _, err = in_process(built, capsys, monkeypatch, "library", "search")
    assert code == 2
    assert "FILE or --text" in err


@pytest.mark.slow
def test_add_publishes_a_new_version_and_refuses_bad_input(
    built: Path,
    cwru_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = _copy(built, tmp_path)
    first = current_version(root)
    recording = cwru_dir / "12k_drive_end" / "108.mat"
    added = faultline(
        root, "library", "add", str(recording), "--label", "Inner race", "--asset", "pump-07",
        "--description", "Pitted at overhaul", "--stop", "2",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "added 6 signatures (3 windows x 2 views)" in added.stdout
    second = current_version(root)
    assert second not in (None, first)
    assert list_versions(root) == sorted([first, second])  # the old version stays on disk
    with open_current(root) as lib:
        counts = lib.info()["views"]["window"]["label_counts"]
        assert counts == {"ball": 3, "inner_race": 6, "normal": 3, "outer_race": 3}
        hits = lib.search_text("pitted overhaul", 50)
        assert len(hits) == 6
        assert {(h["record_id"], h["label"], h["dataset"]) for h in hits} == {
            ("108", "inner_race", "asset pump-07")
        }
        assert lib.manifest["source"]["parent_version"] == first
        assert lib.manifest["source"]["history"][-1]["file"] == "108.mat"

    again = faultline(root, "library", "add", str(recording), "--label", "inner_race")
    assert again.returncode == 1
    assert "6 of 38 signatures are already in library version" in again.stderr  # 0-2 s of 0-10
    assert "nothing was added; current version unchanged" in again.stderr
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00")
    refusals = [
        ((str(recording), "--label", "rust"), 2, "expected one of normal, inner_race, outer_r"),
        ((str(broken), "--label", "ball"), 1, "cannot be used: " + str(broken)),
    ]
    for args, expected, message in refusals:
        code, _, err = in_process(root, capsys, monkeypatch, "library", "add", *args)
        assert code == expected, err
        assert message in err
    assert current_version(root) == second
    assert list_versions(root) == sorted([first, second])
    assert _no_build_leftovers(root)


@pytest.mark.slow
def test_verify_and_info_name_a_flipped_byte(
    built: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = _copy(built, tmp_path)
    version = current_version(root)
    assert version is not None
    target = root / "versions" / version / "shards" / "shard-01" / "index-spectrum.faiss"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    result = faultline(root, "library", "verify")
    assert result.returncode == 1
    assert "shards/shard-01/index-spectrum.faiss: sha256 mismatch" in result.stderr
    for args in (("verify", "--all"), ("info",)):
        code, _, err = in_process(root, capsys, monkeypatch, "library", *args)
        assert code == 1, args
        assert "shards/shard-01/index-spectrum.faiss: sha256 mismatch" in err


def test_duplicate_ids_in_a_build_are_refused(
    cwru_dir: Path, tmp_path: Path, encoder: SpectrumEncoder
) -> None:
    entries = [e for e in read_manifest(cwru_dir) if e.record_id in ("105", "130")]
    two_seconds = lambda e: (0.0, 2.0)  # noqa: E731
    root = tmp_path / "lib"
    good = build_library(entries, root, encoder, segment=two_seconds, progress=False)
    with pytest.raises(LibraryBuildError, match=r"duplicate signature id [0-9a-f]{16}: record 105"):
        build_library([*entries, entries[0]], root, encoder, segment=two_seconds, progress=False)
    assert current_version(root) == good.name
    assert list_versions(root) == [good.name]
    assert _no_build_leftovers(root)


# -- a disk that fills during a build --------------------------------------------------------------
_LIMITED_BUILD = textwrap.dedent(
    """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead of killing us
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from faultline.agent.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("limit", "failing_file", "reason"),
    [
        (4_096, "vectors-window.npy", "File too large"),  # the first file written
        (32_768, "signatures.sqlite", "disk I/O error"),  # vectors and index fit, the store not
    ],
)
def test_a_build_that_hits_a_file_size_limit_changes_nothing(
    built: Path, data_dir: Path, tmp_path: Path, limit: int, failing_file: str, reason: str
) -> None:
    root = _copy(built, tmp_path)
    before = current_version(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTLINE")}
    env["FAULTLINE__LIBRARY__PATH"] = str(root)
    result = subprocess.run(
        [sys.executable, "-c", _LIMITED_BUILD, str(limit),
         "library", "build", "--from", str(data_dir), "--max-seconds", "2"],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "library build abandoned: shards/shard-00/" in result.stderr
    assert "; current version unchanged" in result.stderr
    assert f"shards/shard-00/{failing_file}: cannot write ({reason})" in result.stderr
    assert current_version(root) == before
    assert list_versions(root) == [before]
    assert _no_build_leftovers(root)
    with open_current(root) as lib:  # and what serves is still complete
        assert lib.version == before


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


@pytest.mark.slow
def test_a_build_that_fills_a_real_disk_changes_nothing(
    built: Path, data_dir: Path, tmp_path: Path
) -> None:
    mount = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    # Room for the library as built (its shards and knowledge base, ~300 kB) plus 128 kB:
    # a new version's 8 shard files of ~50 kB each and its knowledge base cannot fit.
    used = sum(p.stat().st_size for p in built.rglob("*") if p.is_file())
    if not _mount_tmpfs(mount, f"{used // 1024 + 128}k"):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        root = mount / "library"
        shutil.copytree(built, root, symlinks=True)
        before = current_version(root)
        full = faultline(
            root, "library", "build", "--from", str(data_dir), "--max-seconds", "2",
            "--shards", "8",
        )  # fmt: skip  # 8 SQLite files of ~50 kB do not fit
        assert full.returncode == 1
        assert "No space left on device" in full.stderr or "database or disk is full" in full.stderr
        assert "cannot write" in full.stderr
        assert "shards/shard-0" in full.stderr
        assert current_version(root) == before
        assert list_versions(root) == [before]
        assert _no_build_leftovers(root)
        assert faultline(root, "library", "verify").returncode == 0
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# -- reload_if_changed ---------------------------------------------------------------------
def _tiny_version(root: Path, seed: int, model_id: str = "m1", shards: int = 2) -> Path:
    rng = np.random.default_rng(seed)
    vectors = {"window": rng.standard_normal((40, 8)).astype(np.float32)}
    vectors["window"] /= np.linalg.norm(vectors["window"], axis=1, keepdims=True)
    rows: list[dict[str, Any]] = [
        {
            "id": f"{seed:04d}{i:012d}",
            "view": "window",
            "row_index": i,
            "label": "ball" if i % 2 else "normal",
            "source": "x.npz",
            "record_id": "x",
            "offset_s": float(i),
            "window_s": 1.0,
            "model_id": model_id,
            "description": f"signature {i}",
        }
        for i in range(40)
    ]
    tmp = new_build_dir(root)
    write_version(tmp, model_id=model_id, vectors=vectors, rows=rows, source={}, shards=shards)
    return publish_version(root, tmp)


def test_reload_if_changed_swaps_to_verified_versions_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _tiny_version(tmp_path, 1)
    query = np.eye(8, dtype=np.float32)[:1]
    with open_current(tmp_path, shards=["shard-01"]) as serving:
        assert reload_if_changed(serving, tmp_path) is None  # nothing published since
        second = _tiny_version(tmp_path, 2)
        fresh = reload_if_changed(serving, tmp_path)
        assert fresh is not None
        with fresh:
            assert fresh.version == second.name
            assert fresh.shards == ("shard-01",)  # the gateway keeps its shard subset
            # a corrupt newer version is refused and logged; the caller keeps `fresh`
            third = _tiny_version(tmp_path, 3)
            victim = third / "shards" / "shard-01" / "signatures.sqlite"
            data = bytearray(victim.read_bytes())
            data[100] ^= 0x01
            victim.write_bytes(bytes(data))
            with caplog.at_level(logging.ERROR, logger="faultline.fault_library.library"):
                assert reload_if_changed(fresh, tmp_path) is None
            assert f"library version {third.name} refused, still serving {second.name}" in (
                caplog.text
            )
            assert "shards/shard-01/signatures.sqlite: sha256 mismatch" in caplog.text
            assert len(fresh.search("window", query, 3)[0]) == 3  # still serving
            # a version from another encoder is refused too
            _tiny_version(tmp_path, 4, model_id="m2")
            with caplog.at_level(logging.ERROR, logger="faultline.fault_library.library"):
                assert reload_if_changed(fresh, tmp_path) is None
            assert "built with encoder 'm2'" in caplog.text
        assert serving.search("window", query, 1)[0]  # the old one still answers
