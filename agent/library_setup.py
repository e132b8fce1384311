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

log = logging.getLogger(__name__)


def load_or_build_library(
    root: Path,
    encoder: SpectrumEncoder,
    *,
    rebuild: bool = False,
    progress: bool = True,
    shards: list[str] | None = None,
) -> FaultLibrary:
    """Open ``root``'s current version; build the default library when there is none.

    A library built by another encoder cannot answer this encoder's embeddings, so a
    model mismatch also triggers a rebuild of the default library (logged).
    """
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
