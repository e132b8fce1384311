"""Shipped model manifests and files, and where packaged model files are found."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["packaged_file"]


def packaged_file(package: str, filename: str) -> Path | None:
    """``filename`` inside the installed ``package``, found without importing it (None:
    the package is not installed). ``find_spec`` only locates the package directory, so
    nothing of a model package (whose own dependencies we do not install) ever runs."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / filename
