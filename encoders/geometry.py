"""Rolling-element bearing geometry and its characteristic defect frequencies.

A defect on a race or a ball strikes at a rate fixed by the bearing's geometry and the
shaft speed. Expressing spectra in multiples of shaft speed ("orders") and locating these
rates lets one library serve machines that run at other speeds or carry other bearings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BearingGeometry:
    """Dimensions that set the defect frequencies (diameters in any one unit)."""

    n_balls: int
    ball_diameter: float
    pitch_diameter: float
    contact_angle_deg: float = 0.0
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.n_balls < 3:
            raise ValueError(f"n_balls must be >= 3, got {self.n_balls}")
        if not 0 < self.ball_diameter < self.pitch_diameter:
            raise ValueError(
                "ball_diameter must be positive and smaller than pitch_diameter, got "
                f"{self.ball_diameter} and {self.pitch_diameter}"
            )
        if not 0 <= self.contact_angle_deg < 90:
            raise ValueError(f"contact_angle_deg must be in [0, 90), got {self.contact_angle_deg}")

    @property
    def _ratio(self) -> float:
        return (
            self.ball_diameter
            / self.pitch_diameter
            * math.cos(math.radians(self.contact_angle_deg))
        )

    def orders(self) -> DefectOrders:
        """Defect rates as multiples of shaft frequency (independent of speed)."""
        r = self._ratio
        n = self.n_balls
        return DefectOrders(
            ftf=0.5 * (1 - r),
            bpfo=0.5 * n * (1 - r),
            bpfi=0.5 * n * (1 + r),
            bsf=self.pitch_diameter / (2 * self.ball_diameter) * (1 - r * r),
        )

    def frequencies_hz(self, rpm: float) -> DefectOrders:
        """Defect frequencies in Hz at ``rpm``."""
        if not rpm > 0:
            raise ValueError(f"rpm must be positive, got {rpm}")
        return self.orders().scaled(rpm / 60.0)


@dataclass(frozen=True, slots=True)
class DefectOrders:
    """FTF (cage), BPFO (outer race), BPFI (inner race) and BSF (ball spin).

    A ball defect strikes both races once per spin revolution, so its line usually
    appears at ``2 * bsf`` (the "rolling element" figure CWRU publishes).
    """

    ftf: float
    bpfo: float
    bpfi: float
    bsf: float

    def scaled(self, factor: float) -> DefectOrders:
        return DefectOrders(
            ftf=self.ftf * factor,
            bpfo=self.bpfo * factor,
            bpfi=self.bpfi * factor,
            bsf=self.bsf * factor,
        )


# Catalogue dimensions (inches) of the deep-groove bearings most often met in motors.
# SKF 6205 and 6203 are the drive-end and fan-end bearings of the CWRU rig.
BEARING_PRESETS: dict[str, BearingGeometry] = {
    "6205": BearingGeometry(9, 0.3126, 1.537, 0.0, "SKF 6205-2RS JEM"),
    "6203": BearingGeometry(8, 0.2656, 1.122, 0.0, "SKF 6203-2RS JEM"),
    # A UC204 housed-unit insert (20 mm bore), as on the UESTC test bench: 8 balls of
    # 5/16 in on a ~33.5 mm pitch, from Timken's housed-unit catalogue multiples (FTF
    # 0.382, BSF 1.992, BPFO 3.052, BPFI 4.948): approximate, not the maker's sheet.
    "UC204": BearingGeometry(8, 7.94, 33.5, 0.0, "UC204 insert (approximate)"),
}

DEFAULT_BEARING = "6205"


def bearing_preset(name: str) -> BearingGeometry:
    """Look up a preset by its designation (``6205``, ``SKF 6205`` and ``skf6205`` all work)."""
    key = name.upper().replace("SKF", "").replace("-2RS", "").strip()
    try:
        return BEARING_PRESETS[key]
    except KeyError:
        known = ", ".join(sorted(BEARING_PRESETS))
        raise ValueError(f"unknown bearing preset {name!r}; known presets: {known}") from None
