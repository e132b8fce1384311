"""The worst-case memory a configuration allows, checked at start-up (issue 14, item 3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from faultline.agent.memory_budget import check, worst_case
from faultline.agent.settings import ConfigError, load_settings
from tests.harness import agent_process_env


def test_the_default_configuration_fits_its_own_limit() -> None:
    settings = load_settings(None, env={})
    # A gateway's agent process after start-up: ~200 MB (bench/e2e.py; this test process
    # holds far more, so it is not the baseline).
    budget = worst_case(settings, baseline_mb=250.0)
    check(settings, budget)
    assert budget.total_mb < settings.limits.memory_mb
    assert {"queued windows", "diagnosis working set", "outbox index"} <= set(budget.parts)


def test_each_bound_moves_the_worst_case() -> None:
    base = worst_case(load_settings(None, env={}), 200.0).total_mb
    for key, value in (
        ("FAULTLINE__PIPELINE__QUEUE_MAX_MB", "128"),
        ("FAULTLINE__PIPELINE__BATCH_MAX_MB", "16"),
        ("FAULTLINE__OUTBOX__MAX_ROWS", "400000"),
        ("FAULTLINE__LIMITS__MAX_SAMPLES", "1000000"),
    ):
        bigger = worst_case(load_settings(None, env={key: value}), 200.0).total_mb
        assert bigger > base, key


def test_a_configuration_over_the_limit_is_refused_naming_its_largest_parts() -> None:
    settings = load_settings(None, env={"FAULTLINE__PIPELINE__QUEUE_MAX_MB": "2000"})
    with pytest.raises(ConfigError) as info:
        check(settings, worst_case(settings, 200.0))
    text = str(info.value)
    assert "limits.memory_mb" in text
    assert "queued windows 2,000 MB (pipeline.queue_max_mb)" in text


@pytest.mark.slow
def test_run_exits_2_on_a_configuration_over_the_limit(
    tmp_path: Path, test_library_root: Path, test_library: object
) -> None:
    env = agent_process_env(
        1, "mem", test_library_root, tmp_path, FAULTLINE__PIPELINE__QUEUE_MAX_MB="4000"
    )
    done = subprocess.run(
        [sys.executable, "-m", "faultline.agent.cli", "run"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "limits.memory_mb" in done.stderr
    assert "pipeline.queue_max_mb" in done.stderr
