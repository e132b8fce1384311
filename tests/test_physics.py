"""Line evidence: real CWRU windows read as the physics says, and verdicts reconciled with it.

The readings run on the real recordings' v1 features (the same numbers the runtime reads);
the reconcile rules run on hand-made evidence so every branch is pinned down. The
held-out-class checks run the evaluation's own folds with and without the line check.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from faultline.agent.commands import eval_runs as eval_cmd
from faultline.encoders.features import characteristic_orders
from faultline.encoders.geometry import bearing_preset
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library import evaluation as ev
from faultline.fault_library.catalog import read_manifest
from faultline.fault_library.diagnosis import DecisionPolicy, diagnose_batch
from faultline.fault_library.library import FaultLibrary
from faultline.fault_library.physics import (
    DEFAULT_RULES,
    KURTOSIS_FEATURE,
    LineEvidence,
    LineEvidenceReader,
    reconcile,
    shifted,
    unresolved_lines,
)
from faultline.fault_library.recordings import iter_windows, read_recording
from faultline.fault_library.verdict import UNKNOWN, Verdict


@pytest.fixture(scope="module")
def dataset(cwru_dir: Path) -> eval_cmd.Dataset:
    return eval_cmd.load_dataset(cwru_dir, window_s=1.0, hop_s=0.5)


def _reader(encoder: SpectrumEncoder, view: eval_cmd.View = "window") -> LineEvidenceReader:
    return LineEvidenceReader(
        encoder.feature_names(view), offset_db=encoder.params.prominence_offset_db
    )


def _evidence_of(dataset: eval_cmd.Dataset, record: str) -> list[LineEvidence]:
    rows = [i for i, w in enumerate(dataset.info) if w.record_id == record]
    return _reader(dataset.encoder).read(dataset.features("window")[rows])


def _share(evidence: list[LineEvidence], family: str, *, corroborated: bool) -> float:
    return float(np.mean([family in e.present(corroborated=corroborated) for e in evidence]))


def test_kurtosis_is_read_back_from_the_features(dataset: eval_cmd.Dataset) -> None:
    healthy = _evidence_of(dataset, "97")
    inner = _evidence_of(dataset, "169")  # inner race 0.014 in: strongly impulsive
    assert all(e.kurtosis is not None and 2.5 < e.kurtosis < 3.5 for e in healthy)
    assert all(e.kurtosis is not None and e.kurtosis > 10 for e in inner)


def test_real_recordings_show_their_own_lines(dataset: eval_cmd.Dataset) -> None:
    # Outer race 0.007 in (130) and 0.021 in (234): BPFO stands highest in the squared
    # envelope of the band the signal chose; inner race (105, 209): BPFI.
    for record, family in (
        ("130", "outer_race"),
        ("234", "outer_race"),
        ("105", "inner_race"),
        ("209", "inner_race"),
    ):
        ev_ = _evidence_of(dataset, record)
        strongest = [max(e.decisive_margins, key=lambda k: e.decisive_margins[k]) for e in ev_]
        assert np.mean([s == family for s in strongest]) >= 0.9, record
    # Healthy 97: no family decisively present in any window.
    assert _share(_evidence_of(dataset, "97"), "outer_race", corroborated=False) == 0.0
    assert _share(_evidence_of(dataset, "97"), "inner_race", corroborated=False) == 0.0


def test_outer_race_without_envelope_lines_shows_raw_harmonics(
    dataset: eval_cmd.Dataset,
) -> None:
    """CWRU 197 (outer race 0.014 in): no BPFO in the envelope, 2x BPFO in the raw spectrum."""
    ev_ = _evidence_of(dataset, "197")
    assert _share(ev_, "outer_race", corroborated=False) == 0.0
    assert _share(ev_, "outer_race", corroborated=True) >= 0.8
    assert "raw BPFO 2x" in ev_[0].reading("outer_race", corroborated=True)


def test_a_spectrum_view_can_confirm_bpfo_but_never_rule_it_out(
    encoder: SpectrumEncoder,
) -> None:
    reader = _reader(encoder, "spectrum")
    assert reader.families == ("outer_race",)  # no envelope: BPFI cannot be read at all
    (evidence,) = reader.read(np.zeros((1, encoder.n_features("spectrum"))))
    assert evidence.assessable == frozenset()
    claimed = Verdict("outer_race", 0.9, None, 0.95)
    assert reconcile(claimed, evidence, {"outer_race", "ball"}) == claimed


def _evidence(
    outer: float, inner: float, *, outer_decisive: float | None = None, kurtosis: float = 3.0
) -> LineEvidence:
    decisive = outer if outer_decisive is None else outer_decisive
    return LineEvidence(
        margins={"outer_race": outer, "inner_race": inner},
        readings={"outer_race": f"BPFO {outer:+.1f}", "inner_race": f"BPFI {inner:+.1f}"},
        assessable=frozenset({"outer_race", "inner_race"}),
        kurtosis=kurtosis,
        decisive_margins={"outer_race": decisive, "inner_race": inner},
        decisive_readings={
            "outer_race": f"BPFO {decisive:+.1f}",
            "inner_race": f"BPFI {inner:+.1f}",
        },
    )


LIBRARY = {"normal", "inner_race", "outer_race", "ball"}


def test_agreeing_lines_keep_the_verdict_and_are_cited() -> None:
    v = reconcile(Verdict("inner_race", 0.8, None, 0.9), _evidence(-9, 6), LIBRARY)
    assert (v.label, v.confidence, v.evidence) == ("inner_race", 0.8, "BPFI +6.0")


def test_lines_overrule_retrieval_when_the_library_knows_the_class() -> None:
    v = reconcile(Verdict("ball", 0.9, None, 0.9), _evidence(6, -9), LIBRARY)
    assert v.label == "outer_race"
    assert v.reason is not None
    assert "instead of ball" in v.reason
    assert 0.85 < v.confidence < 0.9  # 6 dB above threshold


def test_lines_of_a_class_missing_from_the_library_mean_unknown() -> None:
    v = reconcile(Verdict("ball", 0.9, None, 0.9), _evidence(-9, 6), LIBRARY - {"inner_race"})
    assert v.label == UNKNOWN
    assert v.reason is not None
    assert "holds no inner_race" in v.reason


def test_a_line_class_without_its_lines_is_refused_outside_the_grey_zone() -> None:
    refused = reconcile(Verdict("outer_race", 0.9, None, 0.9), _evidence(-5, -9), LIBRARY)
    assert refused.label == UNKNOWN
    assert refused.reason is not None
    assert refused.reason.startswith("no_lines")
    grey = reconcile(Verdict("outer_race", 0.9, None, 0.9), _evidence(-0.5, -9), LIBRARY)
    assert grey.label == "outer_race"


def test_raw_lines_alone_do_not_turn_a_healthy_answer_into_a_fault() -> None:
    raw_only = _evidence(3, -9, outer_decisive=-8)
    healthy = Verdict("normal", 0.9, None, 0.9)
    assert reconcile(healthy, raw_only, LIBRARY).label == "normal"
    assert reconcile(Verdict("ball", 0.9, None, 0.9), raw_only, LIBRARY).label == "outer_race"


def test_without_lines_or_impulsiveness_any_unenrolled_answer_is_normal_by_absence() -> None:
    """No line of any family, Gaussian kurtosis: `normal` by absence whatever retrieval
    said, even a firm ball match and even with no healthy signatures in the library
    (similarity is not evidence of damage). Impulsiveness keeps the answer; so does a
    line in the grey zone just under its threshold, and so does enrolment (the asset's
    own baseline judges it)."""
    faults_only = LIBRARY - {"normal"}
    quiet = _evidence(-9, -9, kurtosis=2.8)
    for claimed in (
        Verdict("ball", 0.9, None, 0.9),
        Verdict("normal", 0.7, None, 0.9),
        Verdict("unknown", 0.9, "novel: best ball match 0.7 < 0.8", 0.7),
    ):
        v = reconcile(claimed, quiet, faults_only)
        assert v.label == "normal", claimed
        assert v.code == "absence"
        assert v.reason is not None
        assert "kurtosis 2.8" in v.reason
        assert "enroll a healthy baseline" in v.reason
        assert 0.5 <= v.confidence <= 0.9
    firm_ball = Verdict("ball", 0.9, None, 0.9)
    assert reconcile(firm_ball, _evidence(-9, -9, kurtosis=6.0), LIBRARY) == firm_ball
    assert reconcile(firm_ball, _evidence(-0.5, -9, kurtosis=2.8), LIBRARY) == firm_ball
    assert reconcile(firm_ball, quiet, LIBRARY, enrolled=True) == firm_ball
    assert reconcile(firm_ball, quiet, LIBRARY, absence=False) == firm_ball
    # Impacts in the demodulation band only (window kurtosis Gaussian): not undamaged.
    struck_band = replace(quiet, band_kurtosis=15.0)
    assert reconcile(firm_ball, struck_band, LIBRARY) == firm_ball
    calm_band = replace(quiet, band_kurtosis=2.0)
    assert reconcile(firm_ball, calm_band, LIBRARY).code == "absence"


def test_shifted_moves_every_threshold() -> None:
    moved = shifted(DEFAULT_RULES, 2.0)
    before = [i.db for r in DEFAULT_RULES for i in r.indicators]
    after = [i.db for r in moved for i in r.indicators]
    assert after == [b + 2.0 for b in before]


def test_held_out_classes_become_unknown_with_the_line_check(
    dataset: eval_cmd.Dataset,
) -> None:
    """Each fault class removed from the library: its windows are mostly `unknown` with
    the line check, and less often without it (v1 features, calibrated; guards at the
    measured inner 0.97, outer 0.92, ball 0.78)."""
    floor = {"inner_race": 0.95, "outer_race": 0.9, "ball": 0.75}
    with_lines = eval_cmd.Embedder(dataset, eval_cmd.Config("window", "none", ()))
    without = with_lines.variant(eval_cmd.Config("window", "none", (), lines=False))
    for fold in ev.held_out_class_folds(dataset.info, classes=tuple(floor)):
        vectors = with_lines.vectors(fold.library)
        checked = ev.run_fold(
            fold, dataset.info, vectors, evidence=with_lines.evidence(fold.library, fold.test)
        ).summary()
        plain = ev.run_fold(
            fold, dataset.info, vectors, evidence=without.evidence(fold.library, fold.test)
        )
        assert checked["unknown_rate"] >= floor[fold.name], (fold.name, checked["unknown_rate"])
        assert plain.summary()["unknown_rate"] < checked["unknown_rate"], fold.name


def test_a_healthy_machine_held_out_of_the_library_reads_normal_by_absence(
    dataset: eval_cmd.Dataset,
) -> None:
    """No healthy signature in the library at all: healthy windows are `normal` by
    absence of damage. Measured 5 of 8 (the issue's target, 95 %, is missed: the other
    three read unknown or outer race); without the line check, none."""
    embedder = eval_cmd.Embedder(dataset, eval_cmd.Config("window", "none", ()))
    (fold,) = ev.held_out_class_folds(dataset.info, classes=("normal",))
    vectors = embedder.vectors(fold.library)
    checked = ev.run_fold(
        fold, dataset.info, vectors, evidence=embedder.evidence(fold.library, fold.test)
    ).summary()
    plain = ev.run_fold(fold, dataset.info, vectors).summary()
    assert checked["recall"]["normal"] >= 0.6
    assert checked["codes"].get("absence", 0) >= 5
    assert plain["recall"]["normal"] == 0.0


def _mean_balanced(
    data: eval_cmd.Dataset, embedder: eval_cmd.Embedder, folds: list[ev.Fold]
) -> float:
    """Mean balanced accuracy over ``folds``, each verdict cross-checked with its lines."""
    return float(
        np.mean(
            [
                ev.run_fold(
                    f,
                    data.info,
                    embedder.vectors(f.library),
                    evidence=embedder.evidence(f.library, f.test),
                ).summary()["balanced_accuracy"]
                for f in folds
            ]
        )
    )


def test_line_check_lifts_lofso_past_the_target_without_costing_lolo(
    dataset: eval_cmd.Dataset,
) -> None:
    """Regression guards on v1 features, nested line thresholds: LOFSO 0.766 with the
    line check and absence (retrieval alone 0.451), LOLO 0.849. Both miss the issue's
    targets (0.95 / 0.99): the transferable features gave up the rig's own spectral shape,
    and ball damage without lines or impulsiveness reads normal by absence."""
    with_lines = eval_cmd.Embedder(dataset, eval_cmd.Config("window", "none", ()))
    without = with_lines.variant(eval_cmd.Config("window", "none", (), lines=False))

    lofso = ev.lofso_folds(dataset.info)
    assert _mean_balanced(dataset, with_lines, lofso) >= 0.76
    assert _mean_balanced(dataset, without, lofso) < 0.6
    assert _mean_balanced(dataset, with_lines, ev.lolo_folds(dataset.info)) >= 0.84


def test_lines_are_found_where_the_estimated_speed_puts_them(cwru_dir: Path) -> None:
    """No rpm given (an asset without a configured speed): the encoder estimates it from
    each window: LOFSO 0.780 (v1 features), as with the manifest's speed."""
    data = eval_cmd.load_dataset(cwru_dir, window_s=1.0, hop_s=0.5, estimate_rpm=True)
    assert all(w.rpm is None for w in data.windows)
    embedder = eval_cmd.Embedder(data, eval_cmd.Config("window", "none", ()))
    assert _mean_balanced(data, embedder, ev.lofso_folds(data.info)) >= 0.77


def test_the_pipeline_checks_lines_and_honours_the_threshold_shift(
    cwru_dir: Path, test_library: FaultLibrary, encoder: SpectrumEncoder
) -> None:
    """Real windows of record 133 (outer race, 3 hp: not in the test library) through
    ``diagnose_batch``: BPFO cited at the default thresholds; with every threshold 20 dB
    higher the outer-race answer has no line left and is refused."""
    (entry,) = [e for e in read_manifest(cwru_dir) if e.record_id == "133"]
    recording = read_recording(entry.path, fs=entry.fs, rpm=entry.rpm)
    windows = list(iter_windows(recording, "asset-133", window_s=1.0, hop_s=0.5))[:6]
    plain = diagnose_batch(windows, encoder, test_library, DecisionPolicy())
    assert [r.verdict.label for r in plain] == ["outer_race"] * 6
    assert all("BPFO" in (r.verdict.evidence or "") for r in plain)
    strict = diagnose_batch(windows, encoder, test_library, DecisionPolicy(line_shift_db=20.0))
    refused = [r for r in strict if r.verdict.label == UNKNOWN]
    assert len(refused) >= 4
    assert all((r.verdict.reason or "").startswith("no_lines") for r in refused)
    unchecked = diagnose_batch(windows, encoder, test_library, DecisionPolicy(line_check=False))
    assert all(r.verdict.evidence is None for r in unchecked)


def test_lines_within_two_bins_of_a_shaft_harmonic_are_unresolved() -> None:
    """UESTC's UC204 at 800 rpm: BPFO (3.052x) lies 0.7 Hz from 3x, BPFI (4.948x) 0.7 Hz
    from 5x, closer than 2 bins of a 1-s window; 3x BPFO (9.156x) is 2.1 Hz from 9x and
    readable. CWRU's 6205 at its speeds: no line of a rule is anywhere near."""
    n204, o204 = characteristic_orders(bearing_preset("UC204"))
    uc204 = dict(zip(n204, o204.tolist(), strict=True))
    names = ["env_1x", "env_bpfo_1", "env_bpfo_3", "env_bpfi_1", "raw_bpfo_2", "log_kurtosis"]
    flags = unresolved_lines(names, uc204, [800.0 / 60.0], 1.0)[0]
    assert flags.tolist() == [False, True, False, True, True, False]
    n6205, o6205 = characteristic_orders(bearing_preset("6205"))
    every = [f"env_{n}" for n in n6205] + [f"raw_{n}" for n in n6205]
    rules = {f for r in DEFAULT_RULES for i in r.indicators for f in i.features}
    shafts = np.array([1721.0, 1750.0, 1772.0, 1797.0]) / 60.0
    cwru = unresolved_lines(every, dict(zip(n6205, o6205.tolist(), strict=True)), shafts, 1.0)
    assert not any(cwru[:, every.index(f)].any() for f in rules)


def test_an_unresolved_family_is_neither_present_nor_absent() -> None:
    """Every line of an indicator unresolved: its margin is NaN, so it accuses nothing,
    refutes nothing (a claimed outer race stands) and does not block normal by absence;
    one readable line left: the indicator reads that line alone."""
    encoder = SpectrumEncoder(projection=None)
    reader = _reader(encoder)
    names = encoder.feature_names("window")
    offset = encoder.params.prominence_offset_db
    row = np.zeros(len(names))
    row[names.index(KURTOSIS_FEATURE)] = np.log10(3.1 / 3.0)
    for k in (1, 2, 3):  # outer-race lines far above any threshold
        row[names.index(f"env_bpfo_{k}")] = (40.0 - offset) / 10.0
    mask = np.zeros((1, len(names)), dtype=bool)
    for k in (1, 2, 3):
        mask[0, names.index(f"env_bpfo_{k}")] = True
    mask[0, names.index("raw_bpfo_2")] = True
    (plain,) = reader.read(row)
    (masked,) = reader.read(row, unresolved=mask)
    assert plain.present(corroborated=False) == ["outer_race"]
    assert np.isnan(masked.margins["outer_race"])
    assert masked.present(corroborated=True) == []
    assert "shaft harmonics" in masked.readings["outer_race"]
    claimed = Verdict("outer_race", 0.9, None, 0.95)
    assert reconcile(claimed, masked, LIBRARY, absence=False) == claimed
    assert reconcile(Verdict(UNKNOWN, 0.0, "x", 0.3), masked, LIBRARY).label == "normal"
    mask[0, names.index("env_bpfo_3")] = False  # 3x readable: it alone stands
    (one,) = reader.read(row, unresolved=mask)
    assert one.present(corroborated=False) == ["outer_race"]


def test_another_machine_healthy_windows_read_normal(
    dataset: eval_cmd.Dataset, cwru_dir: Path
) -> None:
    """The machine split on v1 features (CWRU library, every UESTC window, nested line
    thresholds): guards at the measured balanced accuracy 0.722 and healthy 0.91 (0.715
    and 0.73 before lines within 2 bins of a shaft harmonic were unresolved; outer race
    fell 0.61 -> 0.50: at 800 rpm its lines coincide with 3x and 6x). The issue's target
    (0.90) is missed."""
    env = os.environ.get("FAULTLINE_UESTC_DIR")
    uestc = Path(env) if env else cwru_dir.parent / "uestc"
    test = eval_cmd.load_dataset(uestc, window_s=1.0, hop_s=0.5, channel="Data", bearing="UC204")
    data, fold = eval_cmd.transfer_fold(dataset, test, "uestc", healthy_second_half=False)
    embedder = eval_cmd.Embedder(data, eval_cmd.Config("window", "none", ()))
    quality = data.quality()
    summary = ev.run_fold(
        fold,
        data.info,
        embedder.vectors(fold.library),
        evidence=embedder.evidence(fold.library, fold.test),
        quality=[quality[i] for i in fold.test.tolist()],
    ).summary()
    assert summary["balanced_accuracy"] >= 0.72, summary["recall"]
    assert summary["recall"]["normal"] >= 0.9, summary["recall"]
