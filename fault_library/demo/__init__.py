"""The compact demo set shipped in the repository, and how the demo splits it.

The default library is built from every demo recording EXCEPT the ones the demo streams
(all 3 hp records and the second half of the only healthy record), so what the demo shows
is the agent recognising recordings it has never seen, not recalling its own library.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from faultline.fault_library.catalog import ManifestEntry

DEMO_DIR = Path(__file__).resolve().parent
HELD_OUT_LOAD_HP = 3


@dataclass(frozen=True, slots=True)
class DemoStream:
    """One simulated asset of the demo: which recording it replays, from where."""

    asset: str
    record_id: str
    start_s: float = 0.0
    stop_s: float | None = None


DEMO_STREAMS: tuple[DemoStream, ...] = (
    DemoStream("pump-01", "97", start_s=2.6),  # healthy: second half of the only normal record
    DemoStream("fan-02", "108"),  # inner race 0.007 in, 3 hp
    DemoStream("conveyor-03", "133"),  # outer race 0.007 in, 3 hp
    # ball 0.014 in, 3 hp. Not 121 (ball 0.007 in, 3 hp): its defect shows no line and no
    # impulsiveness, so the physics-first decision reads it normal by absence (a limit
    # stated in docs/EVALUATION.md, not something a demo should hide or stage).
    DemoStream("press-04", "188"),
)


def library_segment(entry: ManifestEntry) -> tuple[float, float | None] | None:
    """Which part of a demo recording the default library may learn from (None: none)."""
    if entry.load_hp == HELD_OUT_LOAD_HP:
        return None
    if entry.label == "normal":
        return (0.0, 2.5)
    return (0.0, None)
