"""Reports: facts by code, prose by the real SmolLM2 GGUF under a grammar, the guard, the
template fallback; end to end through a real broker. No mock anywhere: the model is the
98 MB file the Makefile installs."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from faultline.agent.reports.facts import ReportFacts, facts_from
from faultline.agent.reports.guard import check_narrative
from faultline.agent.reports.template import template_actions, template_narrative
from faultline.agent.reports.worker import (
    ReportJob,
    ReportOffer,
    ReportPolicy,
    ReportWorker,
    build_report,
)
from faultline.agent.reports.writer import (
    ModelError,
    ModelFile,
    NarrativeWriter,
    default_model,
)
from faultline.agent.transport.broker import MosquittoProcess
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.diagnosis import DecisionPolicy, diagnose_batch
from faultline.fault_library.library import FaultLibrary
from tests.collector import Collector
from tests.harness import agent_settings, publish_windows, record_windows, start_agent

SCHEMA = json.loads((files("faultline.agent.reports") / "report.schema.json").read_text())


@pytest.fixture(scope="module")
def outer_race_facts(
    cwru_dir: Path, test_library: FaultLibrary, encoder: SpectrumEncoder
) -> list[ReportFacts]:
    """Facts of real windows of record 133 (outer race, 3 hp: never in the library)."""
    windows = record_windows(cwru_dir, "133", "pump-7", 3)
    results = diagnose_batch(windows, encoder, test_library, DecisionPolicy())
    return [
        facts_from(
            r,
            asset="pump-7",
            window_ts=w.ts,
            alert_id=f"alert-{i}",
            library_version=test_library.version,
        )
        for i, (w, r) in enumerate(zip(windows, results, strict=True))
    ]


@pytest.fixture(scope="module")
def writer() -> NarrativeWriter:
    return NarrativeWriter(
        default_model(),
        threads=2,
        n_ctx=1024,
        max_tokens=512,
        timeout_s=120,
        temperature=0.7,
        seed=1,
    )


# ---------------------------------------------------------------- facts, template, guard


def test_facts_cite_only_retrieved_signatures_of_the_verdicts_class(
    outer_race_facts: list[ReportFacts],
) -> None:
    facts = outer_race_facts[0]
    assert facts.label == "outer_race"
    assert facts.citations
    assert all(label == "outer_race" for _id, label, _score in facts.citations)
    assert "outer_race" in facts.present_families()


def test_the_template_passes_its_own_guard(outer_race_facts: list[ReportFacts]) -> None:
    for facts in outer_race_facts:
        text = " ".join([template_narrative(facts), *template_actions(facts)])
        assert check_narrative(text, facts, facts.prompt_text()) == [], text


@pytest.mark.parametrize(
    ("planted", "why"),
    [
        ("The inner race shows a defect.", "inner_race"),
        ("Misalignment is the likely cause.", "misalignment"),
        ("It matches signature 0123456789abcdef closely.", "library id"),
        ("The BPFO line stands at 107.3 Hz.", "107.3 Hz"),
        ("Velocity reached 9.9 mm/s.", "9.9 mm/s"),
        ("See https://example.com for details.", "link"),
        ("The bearing looks healthy.", "against the verdict"),
        ("Bearing pump-b needs grease.", "names asset 'pump-b'"),
        ("Verdict: outer race.", "field label"),
    ],
)
def test_the_guard_refuses_what_the_evidence_does_not_show(
    outer_race_facts: list[ReportFacts], planted: str, why: str
) -> None:
    facts = outer_race_facts[0]
    good = template_narrative(facts)
    problems = check_narrative(f"{good} {planted}", facts, facts.prompt_text())
    assert problems, planted
    assert any(why in p for p in problems), problems


def test_the_guard_refuses_damage_in_a_report_on_a_healthy_bearing(
    outer_race_facts: list[ReportFacts],
) -> None:
    healthy = replace(outer_race_facts[0], label="normal", lines=[])
    fine = "The bearing of pump-7 shows no defect lines: it looks healthy. Nothing is urgent."
    assert check_narrative(fine, healthy, healthy.prompt_text()) == []
    problems = check_narrative("The bearing of pump-7 is worn.", healthy, healthy.prompt_text())
    assert any("against the verdict normal" in p for p in problems), problems


# ---------------------------------------------------------------- the real model


@pytest.mark.slow
def test_the_grammar_always_gives_the_object_over_many_seeds(
    writer: NarrativeWriter, outer_race_facts: list[ReportFacts]
) -> None:
    evidence = outer_race_facts[0].prompt_text()
    outcomes = [writer.write(evidence, seed=seed) for seed in range(8)]
    assert all(g is not None for g in outcomes), [g is None for g in outcomes]
    for g in outcomes:
        assert g is not None
        assert 20 <= len(g.narrative) <= 320
        assert 1 <= len(g.actions) <= 3
        assert g.completion_tokens > 0
        assert g.tokens_per_s > 0
    refused = sum(
        bool(check_narrative(" ".join([g.narrative, *g.actions]), outer_race_facts[0], evidence))
        for g in outcomes
        if g is not None
    )
    print(f"\n8 seeds: all parsed; the guard refused {refused} of 8 narratives")


def _worker(model: Any, sent: list[bytes], **policy: Any) -> ReportWorker:
    return ReportWorker(
        ReportPolicy(**policy),
        model=model,
        publish=lambda _asset, _mid, build: sent.append(build(1)),
        agent_id="gw-test",
    )


def _offer(worker: ReportWorker, facts: ReportFacts, message_id: str) -> bool:
    """Offer ``facts`` as the agent offers an alert's: the decision from the cheap offer."""
    offer = ReportOffer.of(facts.asset, facts.label, facts.severity, facts.decisive_margins)
    return worker.offer(offer, message_id, lambda: facts)


def _run_one(worker: ReportWorker, facts: ReportFacts, sent: list[bytes]) -> dict[str, Any]:
    worker.start()
    try:
        assert _offer(worker, facts, "report-1")
        end = time.monotonic() + 180.0
        while not sent and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        worker.stop(5)
    assert sent, worker.status()
    body: dict[str, Any] = json.loads(sent[0])
    jsonschema.validate(body, SCHEMA)
    return body


@pytest.mark.slow
def test_a_real_window_gets_a_schema_valid_report_with_code_facts(
    outer_race_facts: list[ReportFacts],
) -> None:
    facts = outer_race_facts[0]
    sent: list[bytes] = []
    body = _run_one(_worker(default_model, sent, threads=2, max_tokens=512), facts, sent)
    cited = {c["id"] for c in body["evidence"]["citations"]}
    assert cited <= {nid for nid, _l, _s in facts.citations}
    assert body["severity"] == facts.severity.as_dict() if facts.severity else body["severity"]
    assert body["verdict"]["label"] == "outer_race"
    assert body["model"]["sha256"] == default_model().sha256
    assert body["generation"]["completion_tokens"] > 0
    assert (body["generated_by"] == "llm") == (body["fallback"] is None)
    if body["fallback"] == "refused":
        assert body["refused"]["reasons"]
        assert body["narrative"] == template_narrative(facts)
    print("\n" + json.dumps(body, indent=1)[:3000])


@pytest.fixture
def broken_models(tmp_path: Path) -> Iterator[dict[str, ModelFile]]:
    real = default_model()
    truncated = tmp_path / "truncated.gguf"
    with real.path.open("rb") as src, truncated.open("wb") as dst:
        dst.write(src.read(1_000_000))
    yield {
        "missing": ModelFile(tmp_path / "nowhere.gguf", "missing", None),
        "truncated, pinned": ModelFile(truncated, "truncated", real.sha256),
        "truncated, unpinned": ModelFile(truncated, "truncated", None),
    }
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_a_missing_or_truncated_model_means_template_reports_and_says_so(
    broken_models: dict[str, ModelFile], outer_race_facts: list[ReportFacts]
) -> None:
    for name, model in broken_models.items():
        with pytest.raises(ModelError):
            NarrativeWriter(
                model, threads=1, n_ctx=512, max_tokens=64, timeout_s=5, temperature=0, seed=0
            )
        sent: list[bytes] = []
        worker = _worker(lambda model=model: model, sent)
        body = _run_one(worker, outer_race_facts[0], sent)
        assert body["generated_by"] == "template", name
        assert body["fallback"] == "model_unavailable", name
        status = worker.status()
        assert status["mode"] == "template", name
        assert status["degraded_reason"], name


def test_one_report_per_change_never_one_per_window(outer_race_facts: list[ReportFacts]) -> None:
    worker = _worker(None, [], min_interval_s=3600)
    first = outer_race_facts[0]
    assert _offer(worker, first, "r1")  # the asset's first
    assert not _offer(worker, replace(first, window_ts=first.window_ts + 1), "r2")  # no change
    assert _offer(worker, replace(first, window_ts=first.window_ts + 2, label="unknown"), "r3")
    assert worker.status()["skipped"] == 1
    assert worker.status()["queued"] == 2


def test_build_report_is_schema_valid_for_the_template(outer_race_facts: list[ReportFacts]) -> None:
    body = build_report(
        ReportJob(outer_race_facts[0], "first", "m1"),
        seq=1,
        agent_id="gw",
        generated=None,
        fallback="model_unavailable",
        refused=None,
        model=None,
    )
    jsonschema.validate(body, SCHEMA)


@pytest.mark.slow
def test_reports_arrive_over_the_broker_after_the_alert(
    mosquitto_session: MosquittoProcess,
    cwru_dir: Path,
    test_library: FaultLibrary,
    encoder: SpectrumEncoder,
    unique_prefix: str,
) -> None:
    """The agent with the real model: an alert for each window at once, one report for
    the asset (not one per window), through the outbox, schema-valid."""
    port = mosquitto_session.port
    settings = agent_settings(
        port,
        unique_prefix,
        FAULTLINE__REPORTS__LLM="true",
        FAULTLINE__REPORTS__THREADS="1",
        FAULTLINE__METRICS__ENABLED="true",
        FAULTLINE__METRICS__PORT="0",
    )
    collector = Collector("127.0.0.1", port, [f"{unique_prefix}/#"])
    agent = start_agent(settings, test_library, encoder)
    try:
        windows = record_windows(cwru_dir, "133", "pump-7", 5, ts0=1.7e9)
        publish_windows(port, unique_prefix, windows)
        alerts = collector.wait_for(lambda t, b: "/alerts/" in t, count=5, timeout=60)
        [(_t, report)] = collector.wait_for(lambda t, b: "/reports/" in t, timeout=180)
        assert agent.metrics is not None
        metrics = _scrape_reports(agent.metrics.port)
    finally:
        agent.stop()
        collector.close()
    jsonschema.validate(report, SCHEMA)
    # The model's own usage counts, summed in /metrics: tokens/s is their rates' ratio.
    made = report["generation"]
    assert made["completion_tokens"] > 0
    assert metrics["faultline_reports_completion_tokens_total"] == made["completion_tokens"]
    assert metrics["faultline_reports_prompt_tokens_total"] == made["prompt_tokens"]
    assert metrics["faultline_reports_generation_seconds_total"] == pytest.approx(
        made["seconds"], abs=1e-3
    )
    assert report["alert_id"] in {a["message_id"] for _t, a in alerts}
    assert report["trigger"] == "first"
    assert report["seq"] == 1
    assert len([t for t, _b in collector.messages if "/reports/" in t]) == 1
    print("\n" + json.dumps(report, indent=1))


def _scrape_reports(port: int) -> dict[str, float]:
    """The report samples of a running agent's /metrics, parsed by Prometheus' parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("faultline_reports_")
    }
