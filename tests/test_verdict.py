"""The kNN vote: clear majorities win, far or split neighbourhoods say "unknown"."""

from __future__ import annotations

import math

import pytest

from faultline.fault_library.verdict import UNKNOWN, Verdict, aggregate, decide


def test_clear_majority_wins_with_high_confidence() -> None:
    v = decide(
        ["inner_race", "inner_race", "inner_race", "outer_race", "ball"],
        [0.95, 0.94, 0.93, 0.80, 0.78],
    )
    assert v.label == "inner_race"
    assert v.reason is None
    assert v.confidence > 0.95
    assert v.top_score == pytest.approx(0.95)


def test_close_neighbour_outweighs_distant_majority() -> None:
    # one near-exact match against four neighbours 0.2 lower: e^(0.2/0.05) = 55x weight each
    v = decide(["ball", "normal", "normal", "normal", "normal"], [0.98, 0.78, 0.78, 0.78, 0.78])
    assert v.label == "ball"
    assert v.confidence == pytest.approx(1 / (1 + 4 * math.exp(-4)), rel=1e-6)


def test_low_similarity_is_novel() -> None:
    v = decide(["inner_race"] * 3, [0.31, 0.30, 0.29], min_similarity=0.5)
    assert v.label == UNKNOWN
    assert v.reason == "novel: best similarity 0.31 < 0.50"
    assert v.confidence == pytest.approx((0.5 - 0.31) / 1.5)


def test_split_vote_is_ambiguous_and_names_both_classes() -> None:
    v = decide(
        ["inner_race", "outer_race", "ball", "inner_race", "outer_race"],
        [0.90, 0.90, 0.90, 0.86, 0.85],
    )
    assert v.label == UNKNOWN
    assert v.reason is not None
    assert v.reason.startswith("ambiguous: inner_race 0.")
    assert " vs outer_race 0." in v.reason
    assert 0.5 < v.confidence < 0.7  # winner's share ~0.37 < 0.5, no tie


def test_exact_tie_is_ambiguous_even_at_half_share() -> None:
    v = decide(["inner_race", "outer_race"], [0.9, 0.9])
    assert v.label == UNKNOWN
    assert v.reason == "ambiguous: inner_race 0.50 vs outer_race 0.50"


def test_thresholds_are_respected_exactly_at_the_boundary() -> None:
    assert decide(["normal"], [0.5], min_similarity=0.5).label == "normal"
    assert decide(["normal"], [0.4999], min_similarity=0.5).label == UNKNOWN


def test_no_neighbours_and_bad_input() -> None:
    assert decide([], []).label == UNKNOWN
    with pytest.raises(ValueError, match="2 labels but 1 scores"):
        decide(["a", "b"], [0.9])
    with pytest.raises(ValueError, match="finite"):
        decide(["normal"], [float("nan")])
    with pytest.raises(ValueError, match="temperature"):
        decide(["normal"], [0.9], temperature=0)


def test_aggregate_weighs_windows_by_confidence() -> None:
    sure = [Verdict("outer_race", 0.95, None, 0.9)] * 3
    hesitant = [Verdict("ball", 0.55, None, 0.7)] * 4  # more windows, less sure: 2.2 < 2.85
    agg = aggregate([*sure, *hesitant])
    assert agg.label == "outer_race"
    assert agg.confidence == pytest.approx(2.85 / (2.85 + 2.2))
    assert agg.top_score == pytest.approx(0.9)


def test_aggregate_mostly_unknown_recording_is_unknown_with_example_reason() -> None:
    novel = Verdict(UNKNOWN, 0.6, "novel: best similarity 0.10 < 0.50", 0.1)
    agg = aggregate([novel, novel, novel, Verdict("normal", 0.9, None, 0.8)])
    assert agg.label == UNKNOWN
    assert agg.reason == "3 of 4 windows unknown; e.g. novel: best similarity 0.10 < 0.50"
    assert agg.top_score == pytest.approx(0.8)


def test_aggregate_split_between_classes_is_ambiguous() -> None:
    agg = aggregate([Verdict("inner_race", 0.9, None, 0.9), Verdict("ball", 0.9, None, 0.9)])
    assert agg.label == UNKNOWN
    assert agg.reason == "ambiguous across windows: ball 0.50 vs inner_race 0.50"
    with pytest.raises(ValueError, match="zero verdicts"):
        aggregate([])


def test_own_baseline_departure_turns_a_normal_vote_into_unknown() -> None:
    """Pure check of the baseline rule: close to its own baseline -> normal; a library
    `normal` far from the asset's own baseline -> unknown (the machine changed)."""
    import numpy as np

    from faultline.fault_library.baseline import fit_baseline, judge_against_baseline
    from faultline.fault_library.verdict import Verdict

    rng = np.random.default_rng(0)
    centre = rng.normal(size=16)
    enrolled = centre + 0.05 * rng.normal(size=(20, 16))
    enrolled /= np.linalg.norm(enrolled, axis=1, keepdims=True)
    baseline = fit_baseline("pump", enrolled.astype(np.float32))
    assert 0.5 < baseline.threshold < 1.0
    library_normal = Verdict("normal", 0.9, None, 0.8)
    near = judge_against_baseline(library_normal, ["normal"], [0.8], 0.999, baseline)
    assert near.label == "normal"
    assert "own baseline of pump" in (near.reason or "")
    far = judge_against_baseline(library_normal, ["normal"], [0.8], 0.2, baseline)
    assert far.label == "unknown"
    assert (far.reason or "").startswith("novel: departed from the own baseline")
    fault = Verdict("outer_race", 0.95, None, 0.97)
    kept = judge_against_baseline(fault, ["outer_race"], [0.97], 0.9, baseline)
    assert kept.label == "outer_race"  # a fault closer than the baseline is not hidden
