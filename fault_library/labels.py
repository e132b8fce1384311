"""The fault classes the product speaks of, in one place."""

from __future__ import annotations

from typing import Final, Literal, get_args

FaultLabel = Literal["normal", "inner_race", "outer_race", "ball", "cage"]
VerdictLabel = Literal["normal", "inner_race", "outer_race", "ball", "cage", "unknown"]

FAULT_LABELS: Final[tuple[str, ...]] = get_args(FaultLabel)
VERDICT_LABELS: Final[tuple[str, ...]] = get_args(VerdictLabel)


def parse_fault_label(value: str) -> str:
    """Normalise a label from a manifest or the command line, or say what is allowed."""
    label = value.strip().lower().replace("-", "_").replace(" ", "_")
    if label not in FAULT_LABELS:
        raise ValueError(
            f"unknown fault label {value!r}; expected one of {', '.join(FAULT_LABELS)}"
        )
    return label
