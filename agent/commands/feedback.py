"""How the long-running verbs talk: to a person on a terminal, and to a script.

One contract for every verb that takes ``--quiet`` / ``--json``:

- **stdout** carries the result: the human summary, or with ``--json`` exactly one JSON
  object and nothing else, or with ``--quiet`` the one result line (or nothing).
- **stderr** carries everything else: progress bars, log lines, warnings and errors.
- Progress bars (tqdm, already a dependency) are drawn when stderr is a terminal, so a
  log file or a CI job is not filled with redrawn bars; ``FAULTLINE_PROGRESS=1`` draws
  them anyway (and ``0`` never). ``--quiet`` turns them off and lowers logging to errors.

The rule for when bars are drawn is :func:`faultline.fault_library.builder.show_progress`,
shared with the library builder's own bars.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from tqdm import tqdm

from faultline.fault_library.builder import show_progress

__all__ = ["Feedback", "add_feedback_args", "json_default"]

T = TypeVar("T")


def add_feedback_args(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    """``--quiet`` (and ``--json``, unless the verb spells it otherwise) for one verb."""
    parser.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="for scripts: no progress and no summary, only errors and the result line",
    )
    if json_flag:
        parser.add_argument(
            "--json",
            action="store_true",
            help="print one JSON object on stdout (progress and logs stay on stderr)",
        )


def json_default(value: object) -> object:
    """``json.dumps`` fallback: numpy scalars as numbers, anything else as text."""
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    return str(value)


@dataclass(frozen=True, slots=True)
class Feedback:
    """What one invocation may print, and where."""

    quiet: bool = False
    json: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Feedback:
        return cls(
            quiet=bool(getattr(args, "quiet", False)), json=bool(getattr(args, "json", False))
        )

    @property
    def progress(self) -> bool:
        """Draw progress bars (on stderr)?"""
        return show_progress(not self.quiet)

    @property
    def human(self) -> bool:
        """Print the human summary on stdout?"""
        return not (self.quiet or self.json)

    def bar(
        self, items: Iterable[T], desc: str, *, total: int | None = None, unit: str = "it"
    ) -> Iterator[T]:
        """``items`` with a progress bar on stderr when bars are drawn."""
        return iter(self.progress_bar(desc, total=total, unit=unit, iterable=items))

    def progress_bar(
        self,
        desc: str,
        *,
        total: float | None = None,
        unit: str = "it",
        iterable: Iterable[Any] | None = None,
    ) -> Any:
        """A tqdm bar on stderr (disabled when bars are not drawn); also a context manager."""
        return tqdm(
            iterable,
            desc=desc,
            total=total,
            unit=unit,
            file=sys.stderr,
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
            mininterval=0.2 if sys.stderr.isatty() else 2.0,
        )

    def say(self, text: str) -> None:
        """A line of the human report: stdout normally, stderr beside ``--json``
        (a script reads stdout), nothing with ``--quiet``. Safe while a bar is drawn."""
        if self.quiet:
            return
        tqdm.write(text, file=sys.stderr if self.json else sys.stdout)

    def note(self, text: str) -> None:
        """A side remark (what is being done): stderr, unless ``--quiet``."""
        if not self.quiet:
            tqdm.write(text, file=sys.stderr)

    def result(self, payload: dict[str, Any], line: str) -> None:
        """The end of a verb: the JSON object with ``--json``, else ``line`` (the human
        summary is printed by the verb before this, when :attr:`human`)."""
        if self.json:
            sys.stdout.write(json.dumps(payload, indent=2, default=json_default) + "\n")
        elif line:
            print(line)
        sys.stdout.flush()
