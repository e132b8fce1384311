"""Build a library version from labelled recordings and publish it atomically.

Every recording is read, checked against its manifest hash, cut into windows and embedded
in both views the runtime searches: the raw window (``window``) and the magnitude spectrum
a sensor would send for it (``spectrum``), so either kind of measurement finds its peers.
Everything is written to a hidden build directory and only a complete, verified version is
switched to ``current``; any failure removes the build directory and leaves ``current``
as it was.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from faultline.encoders.dsp import magnitude_spectrum
from faultline.encoders.geometry import bearing_preset
from faultline.encoders.signals import Measurement, Window
from faultline.encoders.text import TextEncoder
from faultline.fault_library.catalog import ManifestEntry, sha256_file
from faultline.fault_library.index import DEFAULT_LARGE_FACTORY, EXACT_FACTORY
from faultline.fault_library.knowledge_store import KNOWLEDGE_FILE, load_entries, write_knowledge
from faultline.fault_library.labels import parse_fault_label
from faultline.fault_library.library import LibraryError, publish_version
from faultline.fault_library.novelty import CALIBRATION_KEY, calibrate_library
from faultline.fault_library.physics import LINE_RULES_KEY, fit_rules, rules_to_dict
from faultline.fault_library.recordings import RecordingError, iter_windows, read_recording
from faultline.fault_library.signing import SigningKey
from faultline.fault_library.store import VIEWS, StoreError, describe_signature, signature_id
from faultline.fault_library.versions import new_build_dir, write_lock
from faultline.fault_library.writer import write_version

__all__ = [
    "Encoder",
    "LibraryBuildError",
    "SignatureSource",
    "build_library",
    "check_factory",
    "embed_windows",
    "show_progress",
]

_POSITION = {"DE": "drive-end", "FE": "fan-end", "BA": "base"}


class LibraryBuildError(RuntimeError):
    """A build was abandoned; the message names the recording or file at fault."""


class Encoder(Protocol):
    """What the builder needs of an encoder (``faultline.encoders.spectrum.SpectrumEncoder``)."""

    @property
    def model_id(self) -> str: ...

    def encode(self, items: Sequence[Measurement]) -> npt.NDArray[np.float32]: ...


@dataclass
class _Collected:
    vectors: dict[str, list[npt.NDArray[np.float32]]]
    rows: list[dict[str, Any]]
    recordings: list[dict[str, Any]]
    features: dict[str, list[npt.NDArray[np.float64]]] = field(
        default_factory=lambda: {view: [] for view in VIEWS}
    )


def build_library(
    entries: Sequence[ManifestEntry],
    out_root: Path,
    encoder: Encoder,
    *,
    window_s: float = 1.0,
    hop_s: float = 0.5,
    include: Callable[[ManifestEntry], bool] | None = None,
    segment: Callable[[ManifestEntry], tuple[float, float | None]] | None = None,
    dataset: str = "CWRU",
    channel: str = "DE",
    batch_size: int = 256,
    factory: str | None = None,
    large_factory: str = DEFAULT_LARGE_FACTORY,
    nprobe: int | None = None,
    shards: int | Sequence[str] = 1,
    progress: bool = True,
    calibrate: bool = True,
    knowledge: bool = True,
    signer: SigningKey | None = None,
) -> Path:
    """Embed ``entries`` (those ``include`` accepts; ``segment`` gives each one's
    ``(start_s, stop_s)``), write a verified version with ``shards`` shards under
    ``out_root`` and make it current. Returns the published version directory.

    ``calibrate``: measure per-class novelty thresholds and the vote temperature on the
    new library (``fault_library.novelty``) and store them in the manifest's ``source``.
    ``knowledge``: store the fault-mode knowledge base with the version (knowledge_store).
    ``signer``: sign the version (``signing``) before it is published."""
    chosen = [e for e in entries if include is None or include(e)]
    if not chosen:
        raise LibraryBuildError("no recordings selected for the library")
    for entry in chosen:
        try:
            parse_fault_label(entry.label)
        except ValueError as exc:
            where = f"{entry.path.name} (record {entry.record_id})"
            raise LibraryBuildError(f"{where}: {exc}") from None
    if factory is not None:
        dim = getattr(encoder, "dim", None)
        for view in VIEWS:
            check_factory(factory, int(dim(view)) if callable(dim) else 64, view)
    out_root = Path(out_root)
    build_dir: Path | None = None
    try:
        collected = _collect(
            chosen,
            encoder,
            window_s=window_s,
            hop_s=hop_s,
            segment=segment,
            dataset=dataset,
            channel=channel,
            batch_size=batch_size,
            progress=progress,
        )
        vectors = {view: np.concatenate(collected.vectors[view]) for view in VIEWS}
        calibration = calibrate_library(vectors, collected.rows) if calibrate else {}
        line_rules = _fit_line_rules(encoder, collected)
        kb_entries, kb_sha = load_entries() if knowledge else ([], "")
        build_dir = new_build_dir(out_root)
        write_version(
            build_dir,
            model_id=encoder.model_id,
            vectors=vectors,
            rows=collected.rows,
            model_sha256=getattr(encoder, "model_sha256", None),
            shards=shards,
            factory=factory,
            large_factory=large_factory,
            nprobe=nprobe,
            progress=show_progress(progress),
            source={
                "dataset": dataset,
                "channel": channel,
                "window_s": window_s,
                "hop_s": hop_s,
                "recordings": collected.recordings,
                **({CALIBRATION_KEY: calibration} if calibration else {}),
                **({LINE_RULES_KEY: line_rules} if line_rules else {}),
                **(
                    {
                        "knowledge": {
                            "file": KNOWLEDGE_FILE,
                            "entries": len(kb_entries),
                            "sha256": kb_sha,
                        }
                    }
                    if knowledge
                    else {}
                ),
            },
        )
        if knowledge:
            write_knowledge(build_dir / KNOWLEDGE_FILE, kb_entries, TextEncoder())
        with write_lock(out_root):
            return publish_version(
                out_root, build_dir, expected_model_id=encoder.model_id, signer=signer
            )
    except LibraryBuildError:
        raise
    except (LibraryError, StoreError, OSError, ValueError) as exc:
        raise LibraryBuildError(f"library build abandoned: {exc}") from exc
    finally:
        if build_dir is not None and build_dir.exists():  # not renamed: never published
            shutil.rmtree(build_dir, ignore_errors=True)


def _fit_line_rules(encoder: Encoder, collected: _Collected) -> dict[str, Any]:
    """Per view, the line thresholds fitted on the new library's own windows
    (``physics.fit_rules``); empty for an encoder that computes no named features."""
    names_of = getattr(encoder, "feature_names", None)
    params = getattr(encoder, "params", None)
    if not callable(names_of) or params is None:
        return {}
    out: dict[str, Any] = {}
    for view in VIEWS:
        parts = collected.features.get(view) or []
        if not parts:
            continue
        labels = [
            str(r["label"])
            for r in sorted(
                (r for r in collected.rows if r["view"] == view), key=lambda r: int(r["row_index"])
            )
        ]
        rules = fit_rules(
            names_of(view),
            np.concatenate(parts),
            labels,
            offset_db=float(params.prominence_offset_db),
        )
        out[view] = rules_to_dict(rules)
    return out


def check_factory(factory: str, dim: int = 64, view: str = "") -> None:
    """Fail before minutes of encoding if FAISS cannot make ``factory`` for ``dim``."""
    if factory == EXACT_FACTORY:
        return
    try:
        faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1].split(": ")[-1]
        what = f" for {dim}-d {view} vectors" if view else f" for {dim}-d vectors"
        raise LibraryBuildError(
            f"index factory {factory!r} cannot be built{what} ({detail})"
        ) from None


PROGRESS_ENV = "FAULTLINE_PROGRESS"
"""``1``: draw progress bars even when stderr is not a terminal (a CI log); ``0``: never."""


def show_progress(requested: bool = True) -> bool:
    """Draw progress bars? Only when asked and stderr is a terminal, so an agent's log or a
    piped command is not filled with redrawn bars; ``FAULTLINE_PROGRESS`` overrides."""
    if not requested:
        return False
    forced = os.environ.get(PROGRESS_ENV, "").strip()
    if forced in {"0", "1"}:
        return forced == "1"
    return sys.stderr.isatty()


@dataclass(frozen=True, slots=True)
class SignatureSource:
    """Where one recording's signatures come from: what their rows cite."""

    record_id: str
    source: str
    source_sha256: str
    label: str
    dataset: str
    fault_size_in: float | None = None
    load_hp: int | None = None
    bearing: str | None = None
    channel: str = "DE"
    note: str | None = None
    """An engineer's own words, put in front of the generated description (and so in FTS)."""
    asset: str | None = None
    """Set for an asset's own enrolled baseline: its novelty is judged against these rows."""


def embed_windows(
    windows: Sequence[Window],
    encoder: Encoder,
    source: SignatureSource,
    *,
    rpm: float | None,
    window_s: float,
    first_row: Mapping[str, int],
    batch_size: int = 256,
    features_out: dict[str, list[npt.NDArray[np.float64]]] | None = None,
) -> tuple[dict[str, npt.NDArray[np.float32]], list[dict[str, Any]]]:
    """Both views' vectors of ``windows`` and their rows, numbered from ``first_row``.

    ``features_out``: when given (and the encoder computes features), each view's
    unweighted feature rows are appended to it: the builder fits the line thresholds on
    them.
    """
    label = parse_fault_label(source.label)
    vectors: dict[str, list[npt.NDArray[np.float32]]] = {view: [] for view in VIEWS}
    rows: list[dict[str, Any]] = []
    next_row = {view: int(first_row.get(view, 0)) for view in VIEWS}
    for first in range(0, len(windows), batch_size):
        batch = windows[first : first + batch_size]
        inputs: dict[str, Sequence[Measurement]] = {
            "window": batch,
            "spectrum": [magnitude_spectrum(w) for w in batch],
        }
        with_features = getattr(encoder, "encode_with_features", None)
        encoded: dict[str, npt.NDArray[np.float32]] = {}
        for view, items in inputs.items():
            if features_out is not None and callable(with_features):
                feats, encoded[view] = with_features(items)
                features_out[view].append(np.asarray(feats, dtype=np.float64))
            else:
                encoded[view] = encoder.encode(items)
        for view in VIEWS:
            matrix = np.asarray(encoded[view], dtype=np.float32)
            if matrix.shape[0] != len(batch):
                raise LibraryBuildError(
                    f"{source.source} (record {source.record_id}): encoder returned "
                    f"{matrix.shape[0]} {view} vectors for {len(batch)} windows"
                )
            vectors[view].append(matrix)
            for w in batch:
                rows.append(_row(source, label, w, view, next_row[view], rpm, window_s, encoder))
                next_row[view] += 1
    dims = {view: encoder_dim(encoder, view, vectors[view]) for view in VIEWS}
    return {
        view: np.concatenate(vectors[view])
        if vectors[view]
        else np.zeros((0, dims[view]), np.float32)
        for view in VIEWS
    }, rows


def encoder_dim(encoder: Encoder, view: str, parts: Sequence[npt.NDArray[np.float32]]) -> int:
    if parts:
        return int(parts[0].shape[1])
    dim = getattr(encoder, "dim", None)
    return int(dim(view)) if callable(dim) else 0


def _collect(
    entries: Sequence[ManifestEntry],
    encoder: Encoder,
    *,
    window_s: float,
    hop_s: float,
    segment: Callable[[ManifestEntry], tuple[float, float | None]] | None,
    dataset: str,
    channel: str,
    batch_size: int,
    progress: bool,
) -> _Collected:
    out = _Collected({view: [] for view in VIEWS}, [], [])
    next_row = dict.fromkeys(VIEWS, 0)
    bar = tqdm(entries, desc="encode recordings", unit="rec", disable=not show_progress(progress))
    for entry in bar:
        name = f"{entry.path.name} (record {entry.record_id})"
        try:
            source_sha = sha256_file(entry.path)
            if entry.sha256 is not None and source_sha != entry.sha256:
                raise LibraryBuildError(
                    f"{name}: sha256 {source_sha[:12]}... does not match the manifest's "
                    f"{entry.sha256[:12]}..."
                )
            rec = read_recording(
                entry.path,
                fs=entry.fs,
                rpm=entry.rpm,
                geometry=bearing_preset(entry.bearing),
                channel=channel,
            )
            start_s, stop_s = segment(entry) if segment is not None else (0.0, None)
            windows = list(
                iter_windows(
                    rec,
                    f"library:{entry.record_id}",
                    window_s=window_s,
                    hop_s=hop_s,
                    start_s=start_s,
                    stop_s=stop_s,
                )
            )
        except (RecordingError, OSError, ValueError) as exc:
            raise LibraryBuildError(f"{name}: cannot be used: {exc}") from exc
        source = SignatureSource(
            record_id=entry.record_id,
            source=entry.path.name,
            source_sha256=source_sha,
            label=entry.label,
            dataset=dataset,
            fault_size_in=entry.fault_size_in or None,
            load_hp=entry.load_hp,
            bearing=entry.bearing,
            channel=channel,
        )
        vectors, rows = embed_windows(
            windows,
            encoder,
            source,
            rpm=rec.rpm,
            window_s=window_s,
            first_row=next_row,
            batch_size=batch_size,
            features_out=out.features,
        )
        for view in VIEWS:
            out.vectors[view].append(vectors[view])
            next_row[view] += len(vectors[view])
        out.rows += rows
        out.recordings.append(
            {
                "record_id": entry.record_id,
                "file": entry.path.name,
                "sha256": source_sha,
                "label": entry.label,
                "segment_s": [start_s, stop_s],
                "windows": len(windows),
            }
        )
    if not out.rows:
        raise LibraryBuildError(
            f"no windows: every selected recording is shorter than one {window_s} s window"
        )
    return out


def _row(
    source: SignatureSource,
    label: str,
    window: Window,
    view: str,
    row_index: int,
    rpm: float | None,
    window_s: float,
    encoder: Encoder,
) -> dict[str, Any]:
    raw = window.meta.get("offset_s")
    offset = round(float(raw) if isinstance(raw, int | float) else window.ts, 6)
    generated = describe_signature(
        label=label,
        record_id=source.record_id,
        offset_s=offset,
        fault_size_in=source.fault_size_in,
        defect="EDM pit" if source.dataset.upper() == "CWRU" else "defect",
        bearing=source.bearing,
        position=_POSITION.get(source.channel.upper()),
        load_hp=source.load_hp,
        rpm=rpm,
        dataset=source.dataset,
    )
    note = (source.note or "").strip()
    return {
        "id": signature_id(source.source_sha256, source.record_id, offset, window_s, view),
        "view": view,
        "row_index": row_index,
        "label": label,
        "fault_size_in": source.fault_size_in or None,
        "load_hp": source.load_hp,
        "rpm": rpm,
        "bearing": source.bearing,
        "source": source.source,
        "record_id": source.record_id,
        "offset_s": offset,
        "window_s": window_s,
        "dataset": source.dataset,
        "source_sha256": source.source_sha256,
        "asset": source.asset,
        "model_id": encoder.model_id,
        "model_version": getattr(encoder, "model_sha256", None),
        "description": f"{note.rstrip('.')}. {generated}" if note else generated,
    }


Split = Callable[[ManifestEntry], "tuple[float, float | None] | None"]


def build_from_split(
    entries: Sequence[ManifestEntry],
    out_root: Path,
    encoder: Encoder,
    split: Split,
    *,
    dataset: str,
    progress: bool = True,
    signer: SigningKey | None = None,
) -> Path:
    """Build from the part of each recording ``split`` allows: ``(start_s, stop_s)``, or
    None to leave the recording out (held-out loads, the half of a record kept for tests).
    """
    return build_library(
        entries,
        out_root,
        encoder,
        include=lambda e: split(e) is not None,
        segment=lambda e: split(e) or (0.0, None),
        dataset=dataset,
        progress=progress,
        signer=signer,
    )
