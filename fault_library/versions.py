"""A library root: immutable versions and the ``current`` link that says which one serves.

::

    <root>/versions/<version>/   <root>/current -> versions/<version>

Builds go to ``versions/.tmp-<uuid>``; only a complete, verified build is fsynced, renamed
to its final name and then ``current`` is replaced (tmp symlink + ``os.replace``, atomic on
POSIX). A crash or a full disk at any point leaves ``current`` on a complete version, and
``.tmp-*`` leftovers are never served from.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

__all__ = [
    "CURRENT",
    "TMP_PREFIX",
    "VERSIONS_DIR",
    "current_target",
    "current_version",
    "fsync_tree",
    "list_versions",
    "new_build_dir",
    "remove_stale_builds",
    "switch_current",
    "version_dir",
    "write_lock",
]

CURRENT: Final = "current"
VERSIONS_DIR: Final = "versions"
TMP_PREFIX: Final = ".tmp-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """Make every file and directory entry under ``path`` durable (files before dirs)."""
    for child in sorted(path.iterdir()):
        if child.is_dir() and not child.is_symlink():
            fsync_tree(child)
        elif child.is_file():
            with child.open("rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


@contextmanager
def write_lock(root: str | Path) -> Iterator[None]:
    """Serialise writers of one root (an exclusive ``flock`` on ``<root>/.lock``).

    ``library add`` reads the current version and publishes it plus the new signatures;
    two of them at once would each publish without the other's signatures. Readers and
    the serving agent never take this lock.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def new_build_dir(root: str | Path) -> Path:
    """A fresh hidden directory under ``<root>/versions`` that nothing serves from."""
    versions = Path(root) / VERSIONS_DIR
    versions.mkdir(parents=True, exist_ok=True)
    path = versions / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    path.mkdir()
    return path


def version_dir(root: str | Path, version: str) -> Path:
    return Path(root) / VERSIONS_DIR / version


def switch_current(root: str | Path, built_dir: str | Path, version: str) -> Path:
    """Rename a verified build to ``versions/<version>`` and point ``current`` at it."""
    root, built_dir = Path(root), Path(built_dir)
    fsync_tree(built_dir)  # data is durable before any name points at it
    versions = root / VERSIONS_DIR
    versions.mkdir(parents=True, exist_ok=True)
    final = versions / version
    if final.exists():
        raise FileExistsError(f"{final}: version already exists")
    os.rename(built_dir, final)
    _fsync_dir(versions)
    tmp_link = root / f"{TMP_PREFIX}{CURRENT}-{uuid.uuid4().hex}"
    try:
        os.symlink(Path(VERSIONS_DIR) / version, tmp_link)
        os.replace(tmp_link, root / CURRENT)
    finally:
        if tmp_link.is_symlink():
            tmp_link.unlink()
    _fsync_dir(root)
    return final


def current_version(root: str | Path) -> str | None:
    """Name of the version ``current`` points at, without opening it (None: none yet)."""
    link = Path(root) / CURRENT
    if not link.is_symlink():
        return None
    return Path(os.readlink(link)).name


def current_target(root: str | Path) -> Path | None:
    """The directory ``current`` points at, resolved (None: no link)."""
    link = Path(root) / CURRENT
    if not link.is_symlink():
        return None
    return link.resolve()


def list_versions(root: str | Path) -> list[str]:
    """Published versions, oldest first (names start with the build time)."""
    versions = Path(root) / VERSIONS_DIR
    if not versions.is_dir():
        return []
    return sorted(p.name for p in versions.iterdir() if p.is_dir() and not p.name.startswith("."))


def remove_stale_builds(root: str | Path) -> list[Path]:
    """Delete ``.tmp-*`` leftovers of builds that crashed (never served from)."""
    versions = Path(root) / VERSIONS_DIR
    stale = sorted(versions.glob(f"{TMP_PREFIX}*")) if versions.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale
