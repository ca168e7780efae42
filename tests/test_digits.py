"""Permuted digits (`fastslow bench permuted-digits`): a small run's numbers are sane."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from evaluation.digits import DigitsConfig, permuted_tasks, replay_rows, run_method
from fastslow.errors import ConfigError


@pytest.fixture(scope="module")
def two_tasks():
    return permuted_tasks(2, seed=0)


def test_finetune_learns_the_first_task_and_loses_it_to_the_second(two_tasks):
    result = run_method("finetune", two_tasks, DigitsConfig(tasks=2, epochs=5, hidden=100), seed=0)
    (first, unseen), (after, second) = result["matrix"]
    assert first > 0.85 and second > 0.85          # chance is 0.10
    assert unseen < 0.5                             # task 1's pixel order is new to the model
    assert after < first - 0.1                      # learning task 2 cost task 1 accuracy
    assert result["bwt"] == pytest.approx(after - first, abs=1e-4)
    assert result["acc"] == pytest.approx((after + second) / 2, abs=1e-4)


def test_fast_slow_keeps_the_first_task_better_than_finetune(two_tasks):
    config = DigitsConfig(tasks=2, epochs=5, hidden=100)
    finetune = run_method("finetune", two_tasks, config, seed=0)
    fast_slow = run_method("fast-slow", two_tasks, config, seed=0)
    assert fast_slow["matrix"][1][0] > finetune["matrix"][1][0]
    assert fast_slow["matrix"][1][1] > 0.85


def test_replay_sample_holds_the_current_task_and_spreads_the_rest_over_older_ones():
    rows = replay_rows(n=300, task=3, seed=0)
    per_task = Counter(t for t, _ in rows)
    assert len(rows) == 600 and per_task[3] == 300               # recent half: the whole current task
    assert sorted(per_task) == [0, 1, 2, 3]
    assert max(per_task[t] for t in range(3)) - min(per_task[t] for t in range(3)) <= 30   # even over time
    assert len(set(rows)) == len(rows)


def test_tasks_share_one_split_with_pixels_reordered(two_tasks):
    t = two_tasks
    assert np.array_equal(np.sort(t.test_x[0], axis=1), np.sort(t.test_x[1], axis=1))
    assert not np.array_equal(t.test_x[0], t.test_x[1])
    assert np.bincount(t.test_y).min() >= 30                     # stratified: every class held out


def test_bad_configuration_is_refused():
    with pytest.raises(ConfigError, match="optimizer"):
        DigitsConfig(optimizer="lbfgs")
    with pytest.raises(ConfigError, match="method"):
        run_method("dropout", permuted_tasks(2, seed=0), DigitsConfig(tasks=2), seed=0)


def test_cli_prints_json_with_every_method_and_the_seed_table(tmp_path):
    from fastslow.cli import app

    plot = tmp_path / "digits.png"
    result = CliRunner().invoke(app, ["bench", "permuted-digits", "--tasks", "2", "--epochs", "1", "--hidden", "50",
                                      "--seed", "0", "-m", "finetune", "-m", "ewc", "--json", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(doc["methods"]) == {"finetune", "ewc"} and doc["seeds"] == [0]
    run = doc["methods"]["ewc"]["runs"][0]
    assert len(run["matrix"]) == 2 and doc["methods"]["ewc"]["seed_table_acc"] == 0.794
    assert doc["ordering"]["methods"] == ["finetune", "ewc"] and "finetune->ewc" in doc["ordering"]["gaps"]
    assert plot.stat().st_size > 10_000
    bad = CliRunner().invoke(app, ["bench", "permuted-digits", "-m", "dropout"])
    assert bad.exit_code == 2 and "dropout" in bad.output
