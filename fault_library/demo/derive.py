"""Derive the compact demo set that ships in the repository from the shared CWRU files.

A fresh clone has no ``../shared``, yet ``faultline demo`` must work there. So the repo
carries every CWRU record's drive-end channel, cut short and stored as float16 (a few MB),
plus a manifest in the CWRU layout so the same reader serves both. The output is
byte-reproducible (fixed zip timestamps) so re-running the script on the same source
shows a clean ``git diff`` and any change in the numbers is visible.

Run from the repository root::

    python -m faultline.fault_library.demo.derive --source ../shared/data/cwru \
        --out fault_library/demo
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from faultline.encoders.geometry import bearing_preset
from faultline.fault_library.catalog import ManifestEntry, read_manifest, sha256_file, verify_sha256
from faultline.fault_library.recordings import RecordingError, read_mat_channel

DEFAULT_SECONDS = 6.0
"""Long enough for several 1 s windows per record; 48 kHz records (~5.1 s) stay whole."""
HARD_LIMIT_BYTES = 15_000_000
TARGET_BYTES = 8_000_000
FLOAT16_HEADROOM = 1000.0
"""float16 tops out at 65504; CWRU peaks are a few g, so anything near this is a bug."""
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
MANIFEST_COLUMNS = (
    "path",
    "record_id",
    "fault",
    "fault_diameter_in",
    "or_position",
    "load_hp",
    "rpm",
    "fs_hz",
    "sensor_keys",
    "n_samples",
    "sha256",
    "source_sha256",
)


@dataclass(frozen=True)
class Derived:
    """One written demo record and the float16 error it carries."""

    entry: ManifestEntry
    file: Path
    n_samples: int
    source_samples: int
    sha256: str
    n_bytes: int
    max_abs: float
    max_abs_error: float
    rel_rms_error: float


def write_npz(path: Path, arrays: dict[str, npt.NDArray[np.generic]]) -> None:
    """Like ``np.savez_compressed`` but with fixed entry order and timestamps.

    numpy stamps each member with the current time, so two runs differ in bytes.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


def derive_record(entry: ManifestEntry, out_dir: Path, seconds: float) -> Derived:
    """Write ``<record_id>.npz`` for one source record; refuse anything unexpected."""
    if entry.sha256 is not None and not verify_sha256(entry):
        raise RecordingError(f"{entry.path}: SHA-256 differs from the source manifest")
    source, rpm, _key = read_mat_channel(entry.path, "DE")
    if entry.rpm is not None and rpm is not None and rpm != entry.rpm:
        raise RecordingError(f"{entry.path}: file rpm {rpm} differs from manifest {entry.rpm}")
    if not np.all(np.isfinite(source)):
        raise RecordingError(f"{entry.path}: non-finite samples in the DE channel")
    taken = source[: min(len(source), round(seconds * entry.fs))]
    max_abs = float(np.max(np.abs(taken)))
    if max_abs > FLOAT16_HEADROOM:
        raise RecordingError(f"{entry.path}: max |x| = {max_abs} too large for float16")
    half = taken.astype(np.float16)
    error = half.astype(np.float64) - taken
    geometry = bearing_preset(entry.bearing)
    arrays: dict[str, npt.NDArray[np.generic]] = {
        "signal": half,
        "fs": np.array(entry.fs),
        "rpm": np.array(rpm if rpm is not None else entry.rpm),
        "label": np.array(entry.label),
        "fault_size_in": np.array(entry.fault_size_in),
        "load_hp": np.array(-1 if entry.load_hp is None else entry.load_hp),
        "record_id": np.array(entry.record_id),
        "bearing": np.array(entry.bearing),
        "n_balls": np.array(geometry.n_balls),
        "ball_diameter": np.array(geometry.ball_diameter),
        "pitch_diameter": np.array(geometry.pitch_diameter),
        "contact_angle_deg": np.array(geometry.contact_angle_deg),
        "source_sha256": np.array(entry.sha256 or ""),
    }
    out = out_dir / f"{entry.record_id}.npz"
    write_npz(out, arrays)
    return Derived(
        entry=entry,
        file=out,
        n_samples=len(half),
        source_samples=len(source),
        sha256=sha256_file(out),
        n_bytes=out.stat().st_size,
        max_abs=max_abs,
        max_abs_error=float(np.max(np.abs(error))),
        rel_rms_error=float(np.sqrt(np.mean(error**2)) / np.sqrt(np.mean(taken**2))),
    )


def write_manifest(out_dir: Path, derived: Sequence[Derived]) -> Path:
    """The CWRU manifest layout, pointing at the npz files, so ``read_manifest`` is shared."""
    path = out_dir / "manifest.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for d in derived:
            e = d.entry
            writer.writerow(
                [
                    d.file.name,
                    e.record_id,
                    e.label,
                    f"{e.fault_size_in:g}",
                    e.meta.get("or_position", ""),
                    "" if e.load_hp is None else e.load_hp,
                    "" if e.rpm is None else f"{e.rpm:g}",
                    f"{e.fs:g}",
                    "DE",
                    d.n_samples,
                    d.sha256,
                    e.sha256 or "",
                ]
            )
    return path


def _mirrors(readme: str) -> list[tuple[str, str]]:
    """(repository, commit) pairs the source README names, so provenance is not retyped."""
    pattern = r"GitHub\s+`([\w.-]+/[\w.-]+)`\s+at\s+commit\s+`([0-9a-f]{40})`"
    return re.findall(pattern, readme)


def render_provenance(
    derived: Sequence[Derived],
    *,
    seconds: float,
    total_bytes: int,
    source_readme: str,
    versions: dict[str, str],
) -> str:
    """PROVENANCE.md, generated so its figures always match the files next to it."""
    mirrors = _mirrors(source_readme)
    if not mirrors:
        raise RecordingError(
            "source README.md names no 'GitHub `owner/repo` at commit `<sha>`' mirror; "
            "provenance would be incomplete"
        )
    copied, *checks = mirrors
    worst_abs = max(derived, key=lambda d: d.max_abs_error)
    worst_rel = max(derived, key=lambda d: d.rel_rms_error)
    rows = "\n".join(
        f"| {d.entry.record_id} | {d.entry.label} | {d.entry.fault_size_in:g} | "
        f"{d.entry.load_hp} | {d.entry.fs:g} | {d.n_samples} | {d.n_bytes} | "
        f"{d.max_abs:.3f} | {d.max_abs_error:.2e} | {d.rel_rms_error:.2e} |"
        for d in derived
    )
    cross = "".join(
        f"\n  That README reports a numerical cross-check against `{r}` at commit `{c}`."
        for r, c in checks
    )
    env = ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
    whole = [d.entry.record_id for d in derived if d.n_samples == d.source_samples]
    cut = len(derived) - len(whole)
    return f"""# Demo data set: provenance

Generated by `derive.py` (edit the text there, not here). Every figure below was
computed from the files in this folder when they were written.

## What this is

{len(derived)} `.npz` files, one per CWRU record, plus `manifest.csv` in the CWRU
manifest layout (`path` points at the `.npz`, `sha256` is the `.npz`'s hash, `n_samples`
what is stored, `source_sha256` the hash of the original `.mat`). Total
{total_bytes:,} bytes ({total_bytes / 1e6:.2f} MB). It lets `faultline demo` run from a
fresh clone. It is a demonstration set, not a benchmark: see "Caveats".

## Source

- Case Western Reserve University (CWRU) Bearing Data Center, Case School of Engineering
  (https://engineering.case.edu/bearingdatacenter): MATLAB `.mat` files, 12 kHz and
  48 kHz drive-end fault records and the 0 hp normal record.
- The files used were copies byte-identical to GitHub `{copied[0]}`
  at commit `{copied[1]}`, as recorded (with every file's SHA-256)
  in the README and manifest of `../shared/data/cwru`.{cross}
- Each `.npz` stores the SHA-256 of its source `.mat` (`source_sha256`); the deriver
  re-hashed every source file against the source manifest before reading it.

## What was taken

- Channel: drive-end accelerometer (`X<id>_DE_time`) only; fan-end and base channels
  are dropped. Variables are chosen by record number, not by "first `*_DE_time` key".
- Length: the first {seconds:g} s of each record at its native sampling rate, no
  resampling. {cut} records were cut to that length; {len(whole)} shorter ones were kept
  whole ({", ".join(whole) or "none"}).
- Samples stored as float16 (IEEE half precision), compressed with deflate.
- Per record also: `fs`, `rpm` (the file's own `X<id>RPM`), `label`, `fault_size_in`,
  `load_hp`, `record_id`, and the drive-end bearing geometry from the SKF 6205 preset
  (`bearing`, `n_balls`, `ball_diameter`, `pitch_diameter`, `contact_angle_deg`).
- Zip member timestamps are fixed, so the same source gives the same bytes
  (written with {env}).

## float16 error

float16 has an 11-bit significand, so the rounding error of each sample is at most
2^-11 (about 4.9e-4) of its magnitude (3e-8 absolute below 6.1e-5, where float16 is
subnormal). Measured against the float64 source:

- largest |x| in any record: {max(d.max_abs for d in derived):.3f} (float16 max is 65504)
- worst max absolute error: {worst_abs.max_abs_error:.2e} (record {worst_abs.entry.record_id})
- worst relative RMS error (RMS of error / RMS of signal):
  {worst_rel.rel_rms_error:.2e} (record {worst_rel.entry.record_id}),
  i.e. {-20 * np.log10(worst_rel.rel_rms_error):.1f} dB below the signal

| record | label | size in | load hp | fs Hz | samples | bytes | max abs | max err | rel RMS |
|---|---|---|---|---|---|---|---|---|---|
{rows}

## Licence

What we know: CWRU publishes these files openly on the Bearing Data Center website for
download, and they are widely used in published research, which customarily cites the
CWRU Bearing Data Center. Neither `../shared/data/cwru` nor this repository holds a
licence text for the data, and we have not confirmed explicit licence terms from here.
Check the terms on the CWRU site before redistributing the data outside this project.
The derived files are subject to whatever terms apply to the original data.

## Caveats

Only one healthy record exists here (97, 0 hp, ~5.1 s): records 98-100 were not available
to the source folder. All windows of one record come from one bearing mounting, so
split by record, never by window, when measuring accuracy. Faults are EDM-machined, on
one rig. See `../shared/data/cwru/README.md` for the full list.

## Command

From the repository root, with the shared data next to it:

```
python -m faultline.fault_library.demo.derive --source ../shared/data/cwru \\
    --out fault_library/demo --seconds {seconds:g}
```
"""


def derive(source: Path, out: Path, seconds: float = DEFAULT_SECONDS) -> list[Derived]:
    """Derive every manifest row, then the manifest and PROVENANCE.md; enforce the size cap."""
    out.mkdir(parents=True, exist_ok=True)
    entries = read_manifest(source)
    derived = [derive_record(entry, out, seconds) for entry in entries]
    manifest = write_manifest(out, derived)
    total = sum(d.n_bytes for d in derived) + manifest.stat().st_size
    if total > HARD_LIMIT_BYTES:
        raise RecordingError(f"demo set is {total} bytes, over the {HARD_LIMIT_BYTES} limit")
    readme = (source / "README.md").read_text() if (source / "README.md").is_file() else ""
    text = render_provenance(
        derived,
        seconds=seconds,
        total_bytes=total,
        source_readme=readme,
        versions={"numpy": np.__version__, "zlib": zlib.ZLIB_RUNTIME_VERSION},
    )
    (out / "PROVENANCE.md").write_text(text)
    return derived


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m faultline.fault_library.demo.derive",
        description="Derive the float16 demo set (DE channel, first N s) from CWRU .mat files.",
    )
    parser.add_argument("--source", type=Path, required=True, help="CWRU folder with manifest")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS,
        help=f"seconds kept from the start of each record (default {DEFAULT_SECONDS})",
    )
    args = parser.parse_args(argv)
    try:
        derived = derive(args.source, args.out, args.seconds)
    except (RecordingError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    total = sum(d.n_bytes for d in derived) + (args.out / "manifest.csv").stat().st_size
    worst = max(d.rel_rms_error for d in derived)
    print(f"{len(derived)} records, {total / 1e6:.2f} MB, worst float16 relative RMS {worst:.2e}")
    if total > TARGET_BYTES:
        print(f"warning: over the {TARGET_BYTES / 1e6:.0f} MB target", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
