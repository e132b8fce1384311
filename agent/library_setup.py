"""Finding the agent's fault library, or building the default one on first start.

A fresh gateway has no library yet; rather than refuse to start, it builds the default
one from the demo set shipped in the package (once, with a progress bar) and says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.builder import build_from_split
from faultline.fault_library.catalog import read_manifest
from faultline.fault_library.demo import DEMO_DIR, library_segment
from faultline.fault_library.library import FaultLibrary, LibraryError, open_current
from faultline.fault_library.signing import Trust
from faultline.fault_library.versions import current_version, list_versions, version_dir

log = logging.getLogger(__name__)


def load_or_build_library(
    root: Path,
    encoder: SpectrumEncoder,
    *,
    rebuild: bool = False,
    progress: bool = True,
    shards: list[str] | None = None,
    trust: Trust | None = None,
) -> FaultLibrary:
    """Open ``root``'s current version; build the default library when there is none.

    A library built by another encoder cannot answer this encoder's embeddings, so a
    model mismatch also triggers a rebuild of the default library (logged).

    With signatures checked (``trust``), nothing is rebuilt (the default library is not
    signed by the plant): a refused current version is passed over for the newest older
    one that verifies, so a bad publish cannot stop a restarted agent from serving; the
    library watcher then reports the refused one on the errors topic.
    """
    if trust is not None and trust.active and not rebuild:
        return _open_trusted(root, encoder, shards, trust)
    if not rebuild:
        try:
            return open_current(root, expected_model_id=encoder.model_id, shards=shards)
        except FileNotFoundError:
            log.info("no fault library at %s yet: building the default one from the demo set", root)
        except LibraryError as exc:
            log.warning(
                "fault library at %s is unusable (%s): rebuilding the default one", root, exc
            )
    entries = read_manifest(DEMO_DIR)
    build_from_split(
        entries,
        root,
        encoder,
        library_segment,
        dataset="CWRU demo set (loads 0-2 hp + first half of record 97)",
        progress=progress,
    )
    return open_current(root, expected_model_id=encoder.model_id, shards=shards)


def _open_trusted(
    root: Path, encoder: SpectrumEncoder, shards: list[str] | None, trust: Trust
) -> FaultLibrary:
    if current_version(root) is None and not list_versions(root):
        raise LibraryError(
            f"{root}: no library version, and signatures are checked, so the unsigned default "
            "library is not built: publish a signed one (faultline library build "
            "--signing-key KEY)"
        )
    try:
        return open_current(root, expected_model_id=encoder.model_id, shards=shards, trust=trust)
    except LibraryError as exc:
        refused = current_version(root)
        log.error("library version %s at %s refused: %s", refused, root, exc)
    for name in reversed(list_versions(root)):
        if name == refused:
            continue
        try:
            library = FaultLibrary.open(
                version_dir(root, name),
                expected_model_id=encoder.model_id,
                shards=shards,
                trust=trust,
            )
        except LibraryError as exc:
            log.info("library version %s not usable either: %s", name, exc)
            continue
        log.warning("serving library version %s instead of the refused %s", name, refused)
        return library
    raise LibraryError(f"{root}: no library version passes verification (current: {refused})")
