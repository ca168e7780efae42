"""`bench forgetting` on the seasons stream: periods cut at the seasons, finetune forgets, recurrence."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from evaluation.synth import SynthConfig, synth


@pytest.fixture(scope="module")
def seasons_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("seasons") / "seasons.parquet"
    synth(path, SynthConfig.preset("seasons", n_events=12_000, n_users=400, n_items=600, seed=1))
    return path


def test_finetune_forgets_a_season_it_has_not_seen_since(seasons_log):
    from fastslow.cli import app

    result = CliRunner().invoke(app, ["bench", "forgetting", str(seasons_log), "-m", "finetune", "--probes", "400",
                                      "--recurrence-events", "300", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert doc["dataset"]["seasons"] == "ABACA" and doc["dataset"]["tasks"] == 5
    r = doc["methods"]["finetune"]["matrix"]
    c = 3                                         # season C: learned in period 3, never seen again
    assert r[2][c] < 0.01 and r[c][c] > 0.02      # unknown before its period, learned in it ...
    assert r[4][c] < 0.5 * r[c][c]                # ... and mostly lost one period of A later
    assert doc["methods"]["finetune"]["bwt"] < -0.003
    recurrence = doc["methods"]["finetune"]["recurrence_by_period"]
    assert set(recurrence) == {"2", "4"} and all(0.0 < x < 1.0 for x in recurrence.values())


def test_tasks_that_contradict_the_seasons_are_refused(seasons_log):
    from fastslow.cli import app

    result = CliRunner().invoke(app, ["bench", "forgetting", str(seasons_log), "-m", "finetune", "--tasks", "3"])
    assert result.exit_code == 2 and "ABACA" in result.output
