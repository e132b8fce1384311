"""``faultline library ...``: build, extend, inspect, verify and search the fault library.

The library root and the encoder come from the same settings as ``faultline run``, so
what these commands build is what the agent serves; ``--root`` points elsewhere. Every
change publishes a new version atomically; a running agent swaps to it between batches.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faultline.agent.app import default_library_root, encoder_from_settings
from faultline.agent.commands.feedback import Feedback, add_feedback_args
from faultline.agent.commands.library_fleet import fleet_search
from faultline.agent.commands.library_report import (
    neighbour_report,
    print_info,
    print_search,
    text_report,
)
from faultline.agent.commands.recording_args import (
    add_recording_args,
    geometry_from_args,
    recording_from_args,
)
from faultline.agent.commands.run import settings_or_exit
from faultline.agent.settings import Settings
from faultline.encoders.dsp import magnitude_spectrum
from faultline.fault_library.builder import LibraryBuildError, build_library
from faultline.fault_library.catalog import read_manifest
from faultline.fault_library.demo import DEMO_DIR
from faultline.fault_library.labels import FAULT_LABELS, parse_fault_label
from faultline.fault_library.library import FaultLibrary, LibraryError, open_current
from faultline.fault_library.recordings import RecordingError, iter_windows
from faultline.fault_library.signing import SignatureError, SigningKey, sign_version
from faultline.fault_library.store import VIEWS
from faultline.fault_library.updates import add_recording, reshard
from faultline.fault_library.versions import current_version, list_versions, version_dir

EXIT_CODES = "exit status: 0 done, 1 refused or failed (the message says why), 2 bad usage/config"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "library",
        help="build, extend, inspect, verify and search the fault library",
        description=(
            "Maintain the fault library the agent searches: labelled fault signatures "
            "(embeddings) in FAISS indexes, split into shards, with SQLite rows citing where "
            "each came from. Every change writes a new verified version beside the old one "
            "and switches <root>/current atomically; a failed change leaves current as it was."
        ),
        epilog=EXIT_CODES,
    )
    verbs = parser.add_subparsers(dest="library_command", metavar="SUBCOMMAND", required=True)
    _add_build(verbs)
    _add_add(verbs)
    _add_info(verbs)
    _add_verify(verbs)
    _add_search(verbs)
    _add_reshard(verbs)
    _add_sign(verbs)


def _verb(
    verbs: Any,
    name: str,
    help_text: str,
    description: str,
    handler: Callable[[argparse.Namespace], int],
) -> Any:
    parser = verbs.add_parser(name, help=help_text, description=description, epilog=EXIT_CODES)
    parser.add_argument("--config", "-c", default=None, help="YAML configuration file")
    parser.add_argument(
        "--root",
        "--library",
        dest="root",
        default=None,
        help="library root (default: the config's library.path, else <data_dir>/library)",
    )
    parser.set_defaults(handler=handler)
    return parser


def _signing_arg(parser: Any) -> None:
    parser.add_argument(
        "--signing-key",
        default=None,
        metavar="KEY",
        help="ed25519 private key (PEM, `faultline keys generate`) to sign the new version "
        "with (default: the config's library.signing_key; none: unsigned)",
    )


def _add_sign(verbs: Any) -> None:
    p = _verb(
        verbs,
        "sign",
        "sign a published version (e.g. one built before signing was set up)",
        "Verify a published version's files against its manifest, then sign it "
        "(signature.json in the version folder). Gateways with library.require_signature "
        "serve only signed versions.",
        _sign,
    )
    p.add_argument("--version", default=None, help="version to sign (default: current)")
    p.add_argument("--signing-key", required=True, metavar="KEY", help="private key (PEM)")
    add_feedback_args(p)


def _add_build(verbs: Any) -> None:
    p = _verb(
        verbs,
        "build",
        "build a new library version from a folder of labelled recordings",
        "Read DIR/manifest.csv (CWRU layout: path, record_id, fault, fault_diameter_in, "
        "load_hp, rpm, fs_hz, optional sha256 and bearing), check each file's sha256, cut "
        "every recording into windows, embed them in both views (raw window and the "
        "spectrum a sensor would send), spread them over --shards shards by rendezvous "
        "hashing and publish the result as the current version. Below the size where "
        "IVF-PQ trains well each shard uses exact search, and says so.",
        _build,
    )
    p.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="DIR",
        help="folder with manifest.csv, e.g. ../shared/data/cwru; 'demo' = the shipped demo set",
    )
    p.add_argument("--shards", type=int, default=1, help="number of shards (default 1)")
    p.add_argument(
        "--exclude-load",
        type=int,
        action="append",
        default=[],
        metavar="HP",
        help="leave out recordings at this motor load (repeatable), e.g. to hold them out",
    )
    p.add_argument(
        "--factory",
        default=None,
        help="FAISS index factory string for every shard, e.g. Flat or OPQ32_128,IVF1024,PQ32 "
        "(default: exact below the IVF-PQ training threshold, the production IVF-PQ above)",
    )
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists searched per query")
    p.add_argument("--hop", type=float, default=0.5, help="seconds between windows (default 0.5)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="use only the first S seconds of each recording (default: all of it)",
    )
    p.add_argument(
        "--dataset",
        default="CWRU",
        help="data set name cited in every signature's provenance (default CWRU)",
    )
    _signing_arg(p)
    add_feedback_args(p)


def _add_add(verbs: Any) -> None:
    p = _verb(
        verbs,
        "add",
        "add a labelled recording from your own machine as a new version",
        "Add what you saw: cut RECORDING (.mat, .npz, .wav, .csv) into windows, embed them "
        "with the agent's encoder and publish a new version = current + these signatures "
        "(from the current version's kept embeddings; no recording is re-read). Refused "
        f"with nothing changed: a label other than {', '.join(FAULT_LABELS)}, a file that "
        "cannot be read, or windows that are already in the library.",
        _add,
    )
    p.add_argument("recording", help="recording file")
    p.add_argument("--label", required=True, help=f"fault class: {', '.join(FAULT_LABELS)}")
    p.add_argument("--asset", default=None, help="machine it was recorded on, e.g. pump-07")
    p.add_argument(
        "--description", default=None, help="your words, searchable with library search --text"
    )
    p.add_argument("--record-id", default=None, help="name cited in reports (default: file stem)")
    p.add_argument("--fault-size", type=float, default=None, help="defect size in inches")
    p.add_argument("--load-hp", type=int, default=None, help="motor load in hp")
    p.add_argument("--hop", type=float, default=0.5, help="seconds between windows (default 0.5)")
    p.add_argument("--start", type=float, default=0.0, help="first second to use (default 0)")
    p.add_argument("--stop", type=float, default=None, help="last second to use (default: end)")
    add_recording_args(p)
    _signing_arg(p)
    add_feedback_args(p)


def _add_info(verbs: Any) -> None:
    p = _verb(
        verbs,
        "info",
        "show the current version: counts, shards, index kind and why",
        "Open and verify the current version and show its version id, encoder model id, "
        "signature counts per view, label and shard, which index each shard runs and why "
        "(exact below the IVF-PQ training threshold), where its files are and what it was "
        "built from.",
        _info,
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _add_verify(verbs: Any) -> None:
    p = _verb(
        verbs,
        "verify",
        "re-check every checksum of a version",
        "Re-hash every file of every shard against the manifest and load each index and "
        "store. Exit 1 naming the first bad file (flipped bytes, truncation, a missing "
        "file, an edited manifest).",
        _verify,
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", default=None, help="version to check (default: current)")
    which.add_argument("--all", action="store_true", help="check every published version")
    add_feedback_args(p)


def _add_search(verbs: Any) -> None:
    p = _verb(
        verbs,
        "search",
        "show a recording's (or a text's) nearest library signatures",
        "Debugging: embed windows of FILE like the agent does and print the k nearest "
        "signatures with cosine scores, labels and descriptions; or, with --text, full-text "
        "search the signatures' descriptions (SQLite FTS5, bm25 rank: lower is better).",
        _search,
    )
    p.add_argument("file", nargs="?", default=None, help="recording file (or use --text)")
    p.add_argument("--text", default=None, help="words to find in signature descriptions")
    p.add_argument("--k", type=int, default=10, help="neighbours per window (default 10)")
    p.add_argument("--view", choices=VIEWS, default="window", help="window or spectrum")
    p.add_argument("--start", type=float, default=0.0, help="first window's start in s")
    p.add_argument("--windows", type=int, default=1, help="how many windows to search")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--fleet",
        action="store_true",
        help="ask the fleet over MQTT (<prefix>/fleet/search): every shard, wherever held; "
        "the answer names shards that did not reply",
    )
    add_recording_args(p)


def _add_reshard(verbs: Any) -> None:
    p = _verb(
        verbs,
        "reshard",
        "publish the current signatures over a different number of shards",
        "Spread the current version's signatures over N shards (rendezvous hashing: going "
        "from N to N+1 moves about 1/(N+1) of them, all to the new shard) and publish it "
        "as a new version. Uses the kept embeddings; no recording is re-read.",
        _reshard,
    )
    p.add_argument("--shards", type=int, required=True, help="number of shards")
    _signing_arg(p)
    add_feedback_args(p)


# -- handlers ---------------------------------------------------------------------------------
def _context(args: argparse.Namespace) -> tuple[Settings, Path]:
    settings = settings_or_exit(args.config)
    root = Path(args.root) if args.root else default_library_root(settings)
    return settings, root


def _signer(args: argparse.Namespace, settings: Settings) -> SigningKey | None:
    """--signing-key, else library.signing_key; SignatureError when it cannot be read."""
    if args.signing_key:
        return SigningKey.load(args.signing_key)
    return settings.library.signer()


def _fail(message: str, code: int = 1) -> int:
    print(f"faultline: {message}", file=sys.stderr)
    return code


def _build(args: argparse.Namespace) -> int:
    settings, root = _context(args)
    source = Path(args.source)
    if args.source == "demo" and not source.is_dir():
        source = DEMO_DIR
    try:
        entries = read_manifest(source)
    except RecordingError as exc:
        return _fail(str(exc), 2)
    excluded = set(args.exclude_load)
    try:
        signer = _signer(args, settings)
    except SignatureError as exc:
        return _fail(str(exc), 2)
    encoder = encoder_from_settings(settings)
    feedback = Feedback.from_args(args)
    started = time.perf_counter()
    try:
        build_library(
            entries,
            root,
            encoder,
            window_s=settings.encoder.window_s,
            hop_s=args.hop,
            include=lambda e: e.load_hp not in excluded,
            segment=lambda e: (0.0, args.max_seconds),
            dataset=args.dataset,
            factory=args.factory,
            nprobe=args.nprobe,
            shards=args.shards,
            signer=signer,
            progress=not feedback.quiet,
        )
    except (LibraryBuildError, LibraryError) as exc:
        return _fail(f"{exc}; current version unchanged")
    seconds = round(time.perf_counter() - started, 1)
    try:
        with open_current(root, expected_model_id=encoder.model_id) as lib:
            signed = f", signed by key {signer.key_id}" if signer else ", unsigned"
            count = sum(int(v["count"]) for v in lib.info()["views"].values())
            line = f"built library version {lib.version} from {source}{signed} in {seconds} s"
            if feedback.human:
                print(line)
                print_info(lib, root, encoder.model_id)
            payload = {
                **_info_json(lib, root, encoder.model_id),
                "built_from": str(source),
                "signed_by": signer.key_id if signer else None,
                "seconds": seconds,
            }
            feedback.result(payload, "" if feedback.human else f"{lib.version} {count} signatures")
    except LibraryError as exc:  # published and verified a moment ago: the disk is failing
        return _fail(f"built, but the new current version cannot be reopened: {exc}")
    return 0


def _info_json(lib: FaultLibrary, root: Path, model_id: str) -> dict[str, Any]:
    """``library info --json``: the version's manifest summary, where it is, what it checked."""
    info = lib.info()
    info["root"] = str(root)
    info["encoder_matches"] = lib.model_id == model_id
    info["verified"] = {"files": lib.verified.files, "bytes": lib.verified.bytes}
    return info


def _add(args: argparse.Namespace) -> int:
    settings, root = _context(args)
    try:
        label = parse_fault_label(args.label)
    except ValueError as exc:
        return _fail(str(exc), 2)
    try:
        signer = _signer(args, settings)
    except SignatureError as exc:
        return _fail(str(exc), 2)
    encoder = encoder_from_settings(settings)
    feedback = Feedback.from_args(args)
    try:
        feedback.note(f"adding {args.recording} as {label}: encoding, then a new version")
        result = add_recording(
            root,
            args.recording,
            encoder,
            label=label,
            asset=args.asset,
            note=args.description,
            record_id=args.record_id,
            fs=args.fs,
            rpm=args.rpm,
            geometry=geometry_from_args(args),
            channel=args.channel,
            fault_size_in=args.fault_size,
            load_hp=args.load_hp,
            window_s=settings.encoder.window_s,
            hop_s=args.hop,
            start_s=args.start,
            stop_s=args.stop,
            signer=signer,
            progress=feedback.progress,
        )
    except (LibraryBuildError, LibraryError) as exc:
        return _fail(f"{exc}; current version unchanged")
    payload = {
        "version": result.path.name,
        "parent": result.parent,
        "recording": str(args.recording),
        "label": label,
        "asset": args.asset,
        "added": result.added,
        "windows": result.added // len(VIEWS),
        "total": result.total,
        "shards": list(result.shards),
    }
    feedback.result(
        payload,
        f"added {result.added} signatures ({result.added // len(VIEWS)} windows x "
        f"{len(VIEWS)} views) of {args.recording} as {label}: version {result.path.name} "
        f"(was {result.parent}), {result.total} signatures in {len(result.shards)} shard(s)",
    )
    return 0


def _reshard(args: argparse.Namespace) -> int:
    settings, root = _context(args)
    try:
        signer = _signer(args, settings)
    except SignatureError as exc:
        return _fail(str(exc), 2)
    encoder = encoder_from_settings(settings)
    feedback = Feedback.from_args(args)
    try:
        result = reshard(
            root,
            args.shards,
            expected_model_id=encoder.model_id,
            signer=signer,
            progress=feedback.progress,
        )
    except (LibraryBuildError, LibraryError) as exc:
        return _fail(f"reshard: {exc}; current version unchanged")
    share = result.moved / result.total if result.total else 0.0
    payload = {
        "version": result.path.name,
        "parent": result.parent,
        "total": result.total,
        "shards": list(result.shards),
        "moved": result.moved,
        "moved_share": round(share, 4),
        "signed_by": signer.key_id if signer else None,
    }
    feedback.result(
        payload,
        f"version {result.path.name} (was {result.parent}): {result.total} signatures over "
        f"{len(result.shards)} shard(s); {result.moved} ({share:.1%}) changed shard",
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    settings, root = _context(args)
    model_id = encoder_from_settings(settings).model_id
    try:
        with open_current(root) as lib:
            if args.json:
                print(json.dumps(_info_json(lib, root, model_id), indent=2, default=str))
            else:
                print_info(lib, root, model_id)
    except LibraryError as exc:
        return _fail(str(exc))
    return 0


def _verify(args: argparse.Namespace) -> int:
    settings, root = _context(args)
    try:
        trust = settings.library.trust()
    except SignatureError as exc:
        return _fail(str(exc), 2)
    if args.all:
        names = list_versions(root)
    else:
        name = args.version or current_version(root)
        if name is None:
            return _fail(f"{root}/current: no published library version")
        names = [name]
    if not names:
        return _fail(f"{root}: no published library versions")
    feedback = Feedback.from_args(args)
    rows: list[dict[str, Any]] = []
    for name in feedback.bar(names, "verify", unit="version"):
        try:
            with FaultLibrary.open(version_dir(root, name), trust=trust) as lib:
                signed = (
                    f"; signed by trusted key {lib.signed_by}"
                    if lib.signed_by
                    else ("; unsigned" if trust is not None else "")
                )
                rows.append(
                    {
                        "version": name,
                        "ok": True,
                        "files": lib.verified.files,
                        "bytes": lib.verified.bytes,
                        "shards": len(lib.shards),
                        "signed_by": lib.signed_by,
                    }
                )
                if feedback.human:
                    feedback.say(
                        f"ok: version {name}: {lib.verified.files} files, "
                        f"{lib.verified.bytes:,} bytes match the manifest; "
                        f"{len(lib.shards)} shard(s) load{signed}"
                    )
        except LibraryError as exc:
            rows.append({"version": name, "ok": False, "error": str(exc)})
            print(f"faultline: version {name} FAILED verification: {exc}", file=sys.stderr)
    bad = sum(not r["ok"] for r in rows)
    feedback.result(
        {"root": str(root), "ok": not bad, "versions": rows},
        "" if feedback.quiet else f"{len(rows) - bad} of {len(rows)} version(s) verified",
    )
    return 1 if bad else 0


def _search(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.text is None):
        return _fail("give a recording FILE or --text, not both or neither", 2)
    if args.k < 1 or args.windows < 1:
        return _fail("--k and --windows must be >= 1", 2)
    settings, root = _context(args)
    if args.fleet:
        return fleet_search(args, settings)
    encoder = encoder_from_settings(settings)
    try:
        with open_current(root, expected_model_id=None if args.text else encoder.model_id) as lib:
            if args.text is not None:
                report = text_report(lib, args.text, args.k)
            else:
                recording = recording_from_args(args.file, args)
                windows = list(
                    iter_windows(
                        recording, "search", window_s=settings.encoder.window_s, start_s=args.start
                    )
                )[: args.windows]
                if not windows:
                    return _fail(f"{args.file}: no whole window after {args.start} s", 2)
                items = (
                    windows if args.view == "window" else [magnitude_spectrum(w) for w in windows]
                )
                hits = lib.search(args.view, encoder.encode(items), args.k)
                report = neighbour_report(lib, args.file, args.view, windows, hits)
    except RecordingError as exc:
        return _fail(str(exc), 2)
    except LibraryError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_search(report)
    return 0


def _sign(args: argparse.Namespace) -> int:
    _, root = _context(args)
    name = args.version or current_version(root)
    if name is None:
        return _fail(f"{root}/current: no published library version")
    try:
        key = SigningKey.load(args.signing_key)
        with FaultLibrary.open(version_dir(root, name)):
            pass  # its files match its manifest: sign only what verifies
        sign_version(version_dir(root, name), key)
    except SignatureError as exc:
        return _fail(str(exc), 2)
    except (LibraryError, OSError) as exc:
        return _fail(f"version {name} not signed: {exc}")
    Feedback.from_args(args).result(
        {"version": name, "root": str(root), "signed_by": key.key_id},
        f"signed version {name} with key {key.key_id}",
    )
    return 0
