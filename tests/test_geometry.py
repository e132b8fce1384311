"""Bearing defect frequencies against the values published for the CWRU rig."""

from __future__ import annotations

import pytest

from faultline.encoders.geometry import BearingGeometry, bearing_preset


def test_6205_at_1797_rpm_matches_cwru_table() -> None:
    hz = bearing_preset("6205").frequencies_hz(1797)
    assert hz.bpfi == pytest.approx(162.2, abs=0.05)
    assert hz.bpfo == pytest.approx(107.4, abs=0.05)
    assert 2 * hz.bsf == pytest.approx(141.2, abs=0.05)
    assert hz.ftf == pytest.approx(11.93, abs=0.005)


def test_6205_orders_match_published_multiples() -> None:
    o = bearing_preset("SKF 6205").orders()
    assert o.bpfi == pytest.approx(5.4152, abs=2e-4)
    assert o.bpfo == pytest.approx(3.5848, abs=2e-4)
    assert 2 * o.bsf == pytest.approx(4.7135, abs=2e-4)
    assert o.ftf == pytest.approx(0.39828, abs=1e-4)


def test_6203_orders() -> None:
    o = bearing_preset("6203").orders()
    assert o.bpfi == pytest.approx(4.9469, abs=1e-4)
    assert o.bpfo == pytest.approx(3.0531, abs=1e-4)
    assert 2 * o.bsf == pytest.approx(3.9877, abs=1e-4)
    assert o.ftf == pytest.approx(0.3816, abs=1e-4)


def test_frequencies_scale_with_speed_and_sum_rule() -> None:
    g = bearing_preset("6205")
    slow, fast = g.frequencies_hz(900), g.frequencies_hz(1800)
    assert fast.bpfo == pytest.approx(2 * slow.bpfo)
    # BPFO + BPFI = n * shaft frequency for any geometry.
    assert fast.bpfo + fast.bpfi == pytest.approx(g.n_balls * 1800 / 60)


def test_contact_angle_lowers_the_ratio() -> None:
    flat = BearingGeometry(9, 0.3126, 1.537, 0.0)
    angled = BearingGeometry(9, 0.3126, 1.537, 30.0)
    assert angled.orders().bpfo > flat.orders().bpfo
    assert angled.orders().bpfi < flat.orders().bpfi


@pytest.mark.parametrize("rpm", [0.0, -10.0])
def test_bad_rpm_rejected(rpm: float) -> None:
    with pytest.raises(ValueError, match="rpm"):
        bearing_preset("6205").frequencies_hz(rpm)


def test_unknown_preset_names_known_ones() -> None:
    with pytest.raises(ValueError, match="6203, 6205"):
        bearing_preset("6306")
