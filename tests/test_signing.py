"""Signed artefacts (issue 14, item 6): ed25519 signatures of library versions and model
manifests, with real keys and a real library built from CWRU recordings.

A gateway configured with ``library.require_signature`` refuses unsigned, tampered and
untrusted versions (reported on the errors topic, the loaded version keeps serving) and
swaps to a version signed by any trusted key, which is how a key is rotated.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from faultline.agent.app import Agent
from faultline.agent.library_setup import load_or_build_library
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.builder import build_library
from faultline.fault_library.catalog import ManifestEntry, read_manifest
from faultline.fault_library.library import FaultLibrary, LibraryError, open_current
from faultline.fault_library.signing import (
    SIGNATURE_FILE,
    SignatureError,
    SigningKey,
    Trust,
    generate_keypair,
    sign_file,
    sign_version,
    verify_file,
    verify_version,
)
from faultline.fault_library.updates import reshard
from faultline.fault_library.versions import current_version
from tests.collector import Collector
from tests.harness import agent_settings, library_segment, run_cli


@dataclass(frozen=True, slots=True)
class Keys:
    old: SigningKey
    new: SigningKey
    rogue: SigningKey
    old_pub: Path
    new_pub: Path
    rogue_pub: Path


@dataclass(frozen=True, slots=True)
class Built:
    root: Path  # a library root whose current version is signed by keys.old
    version: str


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("keys")
    loaded = {}
    for name in ("old", "new", "rogue"):
        generate_keypair(folder / f"{name}.key", folder / f"{name}.pub")
        loaded[name] = SigningKey.load(folder / f"{name}.key")
    assert (folder / "old.key").stat().st_mode & 0o777 == 0o600
    return Keys(**loaded, **{f"{n}_pub": folder / f"{n}.pub" for n in ("old", "new", "rogue")})


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory,
    cwru_dir: Path,
    encoder: SpectrumEncoder,
    keys: Keys,
) -> Built:
    """A small real library (0 hp records and the healthy one, 2 s each), signed."""

    def segment(entry: ManifestEntry) -> tuple[float, float | None]:
        start, stop = library_segment(entry) or (0.0, None)
        return (start, min(stop or 2.0, 2.0))

    root = tmp_path_factory.mktemp("signed") / "library"
    build_library(
        read_manifest(cwru_dir),
        root,
        encoder,
        include=lambda e: library_segment(e) is not None and e.load_hp == 0,
        segment=segment,
        dataset="signing test, 0 hp, 2 s per record",
        progress=False,
        signer=keys.old,
    )
    version = current_version(root)
    assert version is not None
    return Built(root, version)


def _copy_root(built: Built, tmp_path: Path) -> Path:
    root = tmp_path / "library"
    shutil.copytree(built.root, root, symlinks=True)
    return root


def _publish_copy(root: Path, name: str, change: Callable[[Path], None]) -> Path:
    """Copy the current version under ``name``, alter it, and point ``current`` at it, as a
    careless or hostile publisher would (no write lock, no verification)."""
    source = next(p for p in (root / "versions").iterdir() if p.name[:2] == "20")  # the build
    forged = root / "versions" / name
    shutil.copytree(source, forged)
    change(forged)
    link = root / "current.forging"
    link.symlink_to(Path("versions") / name)
    link.replace(root / "current")
    return forged


def _unsigned(path: Path) -> None:
    (path / SIGNATURE_FILE).unlink()


def _resign(key: SigningKey) -> Callable[[Path], None]:
    return lambda path: sign_version(path, key)


def _tamper_manifest(path: Path) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["views"]["window"]["label_counts"]["inner_race"] = 1
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


def _tamper_knowledge(path: Path) -> None:
    with (path / "knowledge.sqlite").open("ab") as fh:
        fh.write(b"\0")


def test_a_built_version_is_signed_and_each_forgery_is_refused_with_its_reason(
    built: Built, keys: Keys
) -> None:
    directory = (built.root / "current").resolve()
    signature = json.loads((directory / SIGNATURE_FILE).read_text())
    assert signature["key_id"] == keys.old.key_id
    assert set(signature["files"]) == {"manifest.json", "knowledge.sqlite"}
    trusted = Trust.from_files([keys.old_pub], require=True)
    assert verify_version(directory, trusted) == keys.old.key_id
    with FaultLibrary.open(directory, trust=trusted) as lib:
        assert lib.signed_by == keys.old.key_id

    cases = {
        "unsigned": (_unsigned, "unsigned (no signature.json)"),
        "untrusted": (_resign(keys.rogue), f"signed by key '{keys.rogue.key_id}'"),
        "manifest": (_tamper_manifest, "manifest.json: sha256 differs"),
        "knowledge": (_tamper_knowledge, "knowledge.sqlite: sha256 differs"),
    }
    for name, (change, words) in cases.items():
        forged = directory.parent / f"forged-{name}"
        shutil.copytree(directory, forged)
        try:
            change(forged)
            with pytest.raises(LibraryError, match="signature refused") as caught:
                FaultLibrary.open(forged, trust=trusted)
            assert words in str(caught.value), (name, str(caught.value))
        finally:
            shutil.rmtree(forged)
    # A signature whose bytes were altered (the statement kept) does not verify.
    doc = dict(signature)
    doc["files"] = {**doc["files"], "extra.bin": "0" * 64}
    forged = directory.parent / "forged-statement"
    shutil.copytree(directory, forged)
    try:
        (forged / SIGNATURE_FILE).write_text(json.dumps(doc))
        with pytest.raises(SignatureError, match="does not verify"):
            verify_version(forged, trusted)
    finally:
        shutil.rmtree(forged)
    # Without require, unsigned is served but a wrong signature is still refused.
    lenient = Trust.from_files([keys.old_pub], require=False)
    assert verify_version(directory, lenient) == keys.old.key_id


def test_agent_refuses_unsigned_tampered_and_untrusted_versions_then_swaps_to_a_rotated_key(
    mosquitto_session: object,
    built: Built,
    keys: Keys,
    encoder: SpectrumEncoder,
    unique_prefix: str,
    tmp_path: Path,
) -> None:
    port = mosquitto_session.port  # type: ignore[attr-defined]
    root = _copy_root(built, tmp_path)
    settings = agent_settings(
        port,
        unique_prefix,
        FAULTLINE__LIBRARY__WATCH_INTERVAL_S="0.2",
        FAULTLINE__LIBRARY__REQUIRE_SIGNATURE="true",
        # Rotation: the old key and the new one are trusted side by side.
        FAULTLINE__LIBRARY__TRUSTED_KEYS=f"[{keys.old_pub}, {keys.new_pub}]",
    )
    trust = settings.library.trust()
    agent = Agent(settings, open_current(root, trust=trust), encoder, library_root=root)
    agent.start()
    assert agent.transport.wait_connected(10)
    collector = Collector(
        "127.0.0.1", port, [f"{unique_prefix}/errors", f"{unique_prefix}/status/#"]
    )
    refused: dict[str, str] = {}
    try:
        for name, change in (
            ("unsigned", _unsigned),
            ("tampered", _tamper_manifest),
            ("untrusted", _resign(keys.rogue)),
        ):
            _publish_copy(root, f"forged-{name}", change)
            hits = collector.wait_for(
                lambda t, b, n=name: (
                    b.get("code") == "library_refused" and f"forged-{n}" in b.get("reason", "")
                ),
                timeout=20,
            )
            refused[name] = hits[0][1]["reason"]
            assert agent.library.current.version == built.version
        # Back to the signed version, then a new one signed with the new key.
        link = root / "current.back"
        link.symlink_to(Path("versions") / built.version)
        link.replace(root / "current")
        v2 = reshard(root, 2, signer=keys.new).path.name
        deadline = time.monotonic() + 20
        while agent.library.current.version != v2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert agent.library.current.version == v2
        assert agent.library.current.signed_by == keys.new.key_id
    finally:
        collector.close()
        agent.stop()
    print("refusals:", json.dumps(refused, indent=1))
    assert "unsigned (no signature.json) and signatures are required" in refused["unsigned"]
    assert "manifest.json: sha256 differs from the signed one" in refused["tampered"]
    assert f"signed by key '{keys.rogue.key_id}', which is not trusted" in refused["untrusted"]


def test_a_restart_passes_over_a_refused_current_version(
    built: Built, keys: Keys, encoder: SpectrumEncoder, tmp_path: Path
) -> None:
    root = _copy_root(built, tmp_path)
    _publish_copy(root, "zz-unsigned", _unsigned)  # sorts after the good version
    trust = Trust.from_files([keys.old_pub], require=True)
    with load_or_build_library(root, encoder, progress=False, trust=trust) as library:
        assert library.path.name == built.version
    empty = tmp_path / "empty"
    with pytest.raises(LibraryError, match="unsigned default library is not built"):
        load_or_build_library(empty, encoder, progress=False, trust=trust)


def test_model_manifests_are_signed_and_checked(keys: Keys, tmp_path: Path) -> None:
    manifest = tmp_path / "spectrum.json"
    shutil.copy(Path(__file__).resolve().parents[1] / "models" / "spectrum.json", manifest)
    trust = Trust.from_files([keys.new_pub], require=True)
    with pytest.raises(SignatureError, match="unsigned"):
        verify_file(manifest, trust)
    sign_file(manifest, keys.new)
    assert verify_file(manifest, trust) == keys.new.key_id
    manifest.write_text(manifest.read_text().replace("256", "255", 1))
    with pytest.raises(SignatureError, match="sha256 differs"):
        verify_file(manifest, trust)


def test_cli_keys_build_verify_sign_and_startup_checks(
    built: Built, keys: Keys, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAULTLINE")}
    made = run_cli("keys", "generate", str(tmp_path / "plant"), env=env)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "plant.key").stat().st_mode & 0o777 == 0o600
    again = run_cli("keys", "generate", str(tmp_path / "plant"), env=env)
    assert again.returncode == 1
    assert "not overwriting" in again.stderr
    key_id = SigningKey.load(tmp_path / "plant.key").key_id
    shown = run_cli("keys", "id", str(tmp_path / "plant.pub"), env=env)
    assert shown.stdout.startswith(key_id)

    # library sign: an unsigned version signed in place, then verify against trusted keys.
    root = _copy_root(built, tmp_path)
    _publish_copy(root, "zz-unsigned", _unsigned)
    trusted = {**env, "FAULTLINE__LIBRARY__TRUSTED_KEYS": str(tmp_path / "plant.pub")}
    before = run_cli("library", "verify", "--root", str(root), env=trusted)
    assert before.returncode == 0, before.stderr
    assert "; unsigned" in before.stdout
    signed = run_cli(
        "library",
        "sign",
        "--root",
        str(root),
        "--signing-key",
        str(tmp_path / "plant.key"),
        env=env,
    )
    assert signed.returncode == 0, signed.stderr
    strict = {**trusted, "FAULTLINE__LIBRARY__REQUIRE_SIGNATURE": "true"}
    after = run_cli("library", "verify", "--root", str(root), env=strict)
    assert after.returncode == 0, after.stderr
    assert f"signed by trusted key {key_id}" in after.stdout
    other = run_cli(
        "library", "verify", "--root", str(root), "--version", built.version, env=strict
    )
    assert other.returncode == 1  # signed by keys.old, which this gateway does not trust
    assert "not trusted" in other.stderr

    # Start-up: require_signature without keys is a config error; unsigned model manifests
    # stop `run` before it connects anywhere.
    no_keys = run_cli(
        "check-config", "/dev/null", env={**env, "FAULTLINE__LIBRARY__REQUIRE_SIGNATURE": "true"}
    )
    assert no_keys.returncode == 2
    assert "library.trusted_keys: expected at least one public key file" in no_keys.stderr
    models = run_cli("run", env={**trusted, "FAULTLINE__LIBRARY__REQUIRE_SIGNED_MODELS": "true"})
    assert models.returncode == 1, models.stderr
    assert "refusing to start: model manifest" in models.stderr
    assert "unsigned" in models.stderr
    assert "Traceback" not in models.stderr
