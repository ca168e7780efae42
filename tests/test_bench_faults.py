"""`fastslow bench faults`: one cheap scenario through the real command, and the JSON it prints."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fastslow.cli import app


@pytest.mark.broker
@pytest.mark.slow
def test_bench_faults_runs_the_chosen_scenario_and_prints_its_verdict_and_counts_as_json():
    result = CliRunner().invoke(app, ["bench", "faults", "--only", "poison", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["passed"], summary["total"]) == (1, 1)
    [scenario] = summary["scenarios"]
    assert {"name", "passed", "produced", "applied", "lost", "duplicated", "seconds"} <= scenario.keys()
    assert scenario["name"] == "poison" and scenario["passed"] is True
    assert scenario["produced"] == scenario["applied"] + scenario["dead_letters_rate_limited"] > 0
    assert scenario["lost"] == scenario["duplicated"] == 0
    assert "poison: passed" in result.stderr  # progress goes to stderr, the JSON alone to stdout


def test_an_unknown_scenario_name_is_refused_with_the_names_there_are():
    result = CliRunner().invoke(app, ["bench", "faults", "--only", "nowhere"])
    assert result.exit_code == 2
    assert "unknown scenario(s) nowhere" in result.output and "consolidation_crash" in result.output
