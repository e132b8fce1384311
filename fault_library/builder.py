"""Build a library version from labelled recordings and publish it atomically.

Every recording is read, checked against its manifest hash, cut into windows and embedded
in both views the runtime searches: the raw window (``window``) and the magnitude spectrum
a sensor would send for it (``spectrum``), so either kind of measurement finds its peers.
Everything is written to a hidden build directory and only a complete, verified version is
switched to ``current``; any failure removes the build directory and leaves ``current``
as it was.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from faultline.encoders.dsp import magnitude_spectrum
from faultline.encoders.geometry import bearing_preset
from faultline.encoders.signals import Measurement, Window
from faultline.fault_library.index import DEFAULT_LARGE_FACTORY, VectorIndex
from faultline.fault_library.labels import parse_fault_label
from faultline.fault_library.library import (
    LibraryError,
    new_build_dir,
    publish_version,
    write_version,
)
from faultline.fault_library.recordings import (
    ManifestEntry,
    RecordingError,
    iter_windows,
    read_recording,
    sha256_file,
)
from faultline.fault_library.store import VIEWS, StoreError, describe_signature, signature_id

__all__ = ["Encoder", "LibraryBuildError", "build_library"]

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
    progress: bool = True,
) -> Path:
    """Embed ``entries`` (those ``include`` accepts; ``segment`` gives each one's
    ``(start_s, stop_s)``), write a verified version under ``out_root`` and make it current.
    Returns the published version directory."""
    chosen = [e for e in entries if include is None or include(e)]
    if not chosen:
        raise LibraryBuildError("no recordings selected for the library")
    for entry in chosen:
        try:
            parse_fault_label(entry.label)
        except ValueError as exc:
            where = f"{entry.path.name} (record {entry.record_id})"
            raise LibraryBuildError(f"{where}: {exc}") from None
    out_root = Path(out_root)
    build_dir = new_build_dir(out_root)
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
        indexes = {
            view: VectorIndex.build(
                np.concatenate(collected.vectors[view]),
                factory=factory,
                large_factory=large_factory,
                progress=_show(progress),
            )
            for view in VIEWS
        }
        write_version(
            build_dir,
            model_id=encoder.model_id,
            indexes=indexes,
            rows=collected.rows,
            model_sha256=getattr(encoder, "model_sha256", None),
            source={
                "dataset": dataset,
                "channel": channel,
                "window_s": window_s,
                "hop_s": hop_s,
                "recordings": collected.recordings,
            },
        )
        return publish_version(out_root, build_dir, expected_model_id=encoder.model_id)
    except LibraryBuildError:
        raise
    except (LibraryError, StoreError, OSError, ValueError) as exc:
        raise LibraryBuildError(f"library build abandoned: {exc}") from exc
    finally:
        if build_dir.exists():  # not renamed into versions/: never published
            shutil.rmtree(build_dir, ignore_errors=True)


def _show(progress: bool) -> bool:
    return progress and sys.stderr.isatty()


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
    bar = tqdm(entries, desc="encode recordings", unit="rec", disable=not _show(progress))
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
        for first in range(0, len(windows), batch_size):
            batch = windows[first : first + batch_size]
            encoded = {
                "window": encoder.encode(batch),
                "spectrum": encoder.encode([magnitude_spectrum(w) for w in batch]),
            }
            for view in VIEWS:
                vectors = np.asarray(encoded[view], dtype=np.float32)
                if vectors.shape[0] != len(batch):
                    raise LibraryBuildError(
                        f"{name}: encoder returned {vectors.shape[0]} {view} vectors "
                        f"for {len(batch)} windows"
                    )
                out.vectors[view].append(vectors)
                for w in batch:
                    out.rows.append(
                        _row(
                            entry,
                            w,
                            view,
                            next_row[view],
                            source_sha,
                            rec.rpm,
                            window_s,
                            dataset,
                            channel,
                            encoder,
                        )
                    )
                    next_row[view] += 1
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
    return out


def _row(
    entry: ManifestEntry,
    window: Window,
    view: str,
    row_index: int,
    source_sha: str,
    rpm: float | None,
    window_s: float,
    dataset: str,
    channel: str,
    encoder: Encoder,
) -> dict[str, Any]:
    raw = window.meta.get("offset_s")
    offset = round(float(raw) if isinstance(raw, int | float) else window.ts, 6)
    label = parse_fault_label(entry.label)
    return {
        "id": signature_id(source_sha, entry.record_id, offset, window_s, view),
        "view": view,
        "row_index": row_index,
        "label": label,
        "fault_size_in": entry.fault_size_in or None,
        "load_hp": entry.load_hp,
        "rpm": rpm,
        "bearing": entry.bearing,
        "source": entry.path.name,
        "record_id": entry.record_id,
        "offset_s": offset,
        "window_s": window_s,
        "dataset": dataset,
        "source_sha256": source_sha,
        "model_id": encoder.model_id,
        "model_version": getattr(encoder, "model_sha256", None),
        "description": describe_signature(
            label=label,
            record_id=entry.record_id,
            offset_s=offset,
            fault_size_in=entry.fault_size_in,
            defect="EDM pit" if dataset.upper() == "CWRU" else "defect",
            bearing=entry.bearing,
            position=_POSITION.get(channel.upper()),
            load_hp=entry.load_hp,
            rpm=rpm,
            dataset=dataset,
        ),
    }
