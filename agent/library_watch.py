"""Hot swap: notice a newly published library version and switch to it between batches.

``faultline library build`` (or ``library add``) publishes a version by atomically
re-pointing ``<root>/current``. The watcher polls that link (cheap, no inotify needed on
balena's overlay filesystems) and also reacts at once to a ``reload_library`` command on
the MQTT command topic. A version that fails verification (files, encoder, or its signature
when ``library.trusted_keys`` are set) is refused and the one already loaded keeps serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from faultline.fault_library.library import FaultLibrary, LibraryError, open_if_changed
from faultline.fault_library.signing import Trust
from faultline.fault_library.versions import current_target

log = logging.getLogger(__name__)


class LibraryHolder:
    """The agent's current library; swapped atomically, old ones closed at shutdown.

    Workers read ``current`` once per batch, so a batch never mixes two versions and a
    swap never interrupts one. Retired versions stay open until stop because a worker
    may still be searching them.
    """

    def __init__(self, library: FaultLibrary) -> None:
        self._lock = threading.Lock()
        self._current = library
        self._retired: list[FaultLibrary] = []

    @property
    def current(self) -> FaultLibrary:
        return self._current

    def swap(self, library: FaultLibrary) -> FaultLibrary:
        with self._lock:
            old, self._current = self._current, library
            self._retired.append(old)
        return old

    def close(self) -> None:
        with self._lock:
            for library in [*self._retired, self._current]:
                library.close()
            self._retired.clear()


class LibraryWatcher:
    """Polls ``<root>/current`` and swaps in verified new versions."""

    def __init__(
        self,
        root: Path,
        holder: LibraryHolder,
        *,
        expected_model_id: str,
        interval_s: float,
        on_swap: Callable[[FaultLibrary, FaultLibrary], None],
        on_refused: Callable[[str, str], None],
        trust: Trust | None = None,
    ) -> None:
        self.root = root
        self._trust = trust  # signatures checked before anything else (fault_library.signing)
        self._holder = holder
        self._expected_model_id = expected_model_id
        self._interval_s = interval_s
        self._on_swap = on_swap
        self._on_refused = on_refused
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._check_lock = threading.Lock()
        self._refused: str | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="faultline-library-watch", daemon=True
        )
        self._thread.start()

    def request_check(self) -> None:
        """Check now (MQTT ``reload_library`` command) instead of at the next poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def check(self) -> bool:
        """Swap if ``current`` names another version that verifies; True when swapped."""
        with self._check_lock:
            serving = self._holder.current
            try:
                library = open_if_changed(
                    serving, self.root, expected_model_id=self._expected_model_id, trust=self._trust
                )
            except OSError as exc:
                log.warning("cannot read %s/current: %s", self.root, exc)
                return False
            except LibraryError as exc:
                target = str(current_target(self.root))
                if target != self._refused:  # report each bad version once
                    self._refused = target
                    log.error(
                        "library %s refused, still serving %s: %s", target, serving.version, exc
                    )
                    self._on_refused(Path(target).name, str(exc))
                return False
            if library is None:
                return False
            old = self._holder.swap(library)
            log.info("library swapped: %s -> %s", old.version, library.version)
            self._on_swap(old, library)
            return True

    def _run(self) -> None:
        timeout = self._interval_s if self._interval_s > 0 else None
        while not self._stop.is_set():
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.check()
            except Exception:
                log.exception(
                    "library check failed; still serving %s", self._holder.current.version
                )
