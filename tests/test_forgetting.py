"""The forgetting benchmark: ACC/BWT against hand computations, the period split, and the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from consolidation_fixtures import DAY_MS, T0_MS, cluster_events, one_torch_thread  # noqa: F401
from typer.testing import CliRunner

from consolidation.forgetting import acc, bwt, split_tasks
from fastslow.errors import ConfigError

#: R[j][i]: score on period i after learning period j.
MATRIX = [[0.50, 0.10, 0.00],
          [0.40, 0.60, 0.20],
          [0.30, 0.55, 0.70]]


def test_acc_and_bwt_of_a_hand_built_3x3_matrix():
    # ACC: the last row's mean; BWT: (0.30 - 0.50 + 0.55 - 0.60) / 2
    assert math.isclose(acc(MATRIX), (0.30 + 0.55 + 0.70) / 3)
    assert math.isclose(bwt(MATRIX), -0.125)
    assert bwt([[0.4]]) == 0.0 and math.isclose(acc([[0.4]]), 0.4)
    improving = [[0.2, 0.0], [0.5, 0.6]]            # learning period 1 helped period 0
    assert math.isclose(bwt(improving), 0.3)


def _log(n_periods: int = 3) -> pa.Table:
    return pa.concat_tables([cluster_events(start_ms=T0_MS + p * DAY_MS, first_id=p * 10_000, seed=p)
                             for p in range(n_periods)])


def test_periods_are_consecutive_and_held_out_tails_are_never_learned():
    log = _log()
    parts = split_tasks(log, tasks=3, holdout=0.1, max_probes=20, seed=0)
    assert len(parts) == 3
    learned = set()
    for n, part in enumerate(parts):
        times = pc.cast(part.train.column("timestamp"), pa.int64()).to_numpy()
        assert part.train.num_rows == 480 - 48 and len(part.probes) == 20
        assert (np.diff(times) >= 0).all()
        assert part.probes.timestamps_ms.min() > times.max()            # the tail of its own period
        if n + 1 < len(parts):
            following = pc.cast(parts[n + 1].train.column("timestamp"), pa.int64()).to_numpy()
            assert part.probes.timestamps_ms.max() < following.min()
        learned |= set(part.train.column("event_id").to_pylist())
    probes = {e for part in parts for e in part.probes.event_ids.tolist()}
    assert not probes & learned


def test_a_probes_history_holds_only_learned_items_before_it():
    log = _log(1)
    (part,) = split_tasks(log, tasks=1, holdout=0.5, max_probes=None)
    rows = log.to_pylist()
    held = set(part.probes.event_ids.tolist())
    for n in (0, len(part.probes) // 2, len(part.probes) - 1):
        user, event = part.probes.users[n], part.probes.event_ids[n]
        before = []
        for row in rows:
            if row["event_id"] == event:
                break
            if row["user_id"] == user and row["event_id"] not in held:
                before.append(row["item_id"])
        assert part.probes.history_of(n) == before[-50:]


def test_bad_splits_are_refused():
    with pytest.raises(ConfigError):
        split_tasks(_log(1), tasks=0)
    with pytest.raises(ConfigError):
        split_tasks(_log(1), tasks=3, holdout=1.0)


@pytest.mark.slow
def test_bench_command_prints_the_matrices_and_summaries(tmp_path):
    from fastslow.cli import app

    path = tmp_path / "log.parquet"
    import pyarrow.parquet as pq
    pq.write_table(_log(3), path)
    plot = tmp_path / "forgetting.png"
    result = CliRunner().invoke(app, ["bench", "forgetting", str(path), "--tasks", "3", "--probes", "30",
                                      "-m", "finetune", "-m", "ewc", "-m", "fast-slow", "--epochs", "1",
                                      "--json", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(document["methods"]) == {"finetune", "ewc", "fast-slow"}
    for summary in document["methods"].values():
        matrix = summary["matrix"]
        assert np.asarray(matrix).shape == (3, 3) and all(0.0 <= x <= 1.0 for row in matrix for x in row)
        assert math.isclose(summary["acc"], acc(matrix), abs_tol=1e-6)
        assert math.isclose(summary["bwt"], bwt(matrix), abs_tol=1e-6)
    assert len(document["methods"]["ewc"]["consolidations"]) == 2          # after periods 1 and 2
    assert plot.stat().st_size > 0


def test_consolidation_timing_reports_the_sample_and_its_phases():
    from consolidation.bench import consolidation_seconds
    from consolidation.train import ConsolidationConfig

    timing = consolidation_seconds(_log(2), size=500, config=ConsolidationConfig(epochs=1, fisher_samples=100))
    assert timing["sample_events"] == 500 and timing["threads"] == 1 and timing["epochs"] == 1
    assert {"sample", "examples", "fisher", "train", "evaluate", "consolidate"} <= set(timing["phases"])
    assert timing["seconds"] >= timing["phases"]["consolidate"]


def _tied_log() -> pa.Table:
    # second: 0 a x | 1 a y | 2 a z | 2 a w | 3 b x | 3 a v   (z and w one basket, as are x and v)
    rows = [("a", "x", 0), ("a", "y", 1), ("a", "z", 2), ("a", "w", 2), ("b", "x", 3), ("a", "v", 3)]
    return pa.table({"event_id": [str(n) for n in range(6)], "user_id": [r[0] for r in rows],
                     "item_id": [r[1] for r in rows],
                     "timestamp": pa.array([T0_MS + 1000 * r[2] for r in rows], pa.int64()).cast(pa.timestamp("ms", "UTC")),
                     "event_type": ["click"] * 6, "value": [1.0] * 6})


def test_events_sharing_a_timestamp_are_one_step_for_the_probes():
    # holdout 0.5 would cut between z and w (same second): the held-out tail starts at the step
    (part,) = split_tasks(_tied_log(), tasks=1, holdout=0.5, max_probes=None)
    assert part.train.column("item_id").to_pylist() == ["x", "y"]
    assert part.probes.items.tolist() == ["z", "w", "x", "v"]
    assert [part.probes.history_of(n) for n in range(4)] == [["x", "y"], ["x", "y"], [], ["x", "y"]]


def test_recurrence_ranks_a_step_before_learning_it():
    from consolidation.forgetting import prequential_ndcg
    from evaluation.peers import Popularity

    policy, seen = Popularity(), {}
    policy.learn_one("a", "x", 0.0)
    # c->z and d->z share a second: z is unseen before the step for both (per event, d would hit)
    events = [("c", "z", 5.0, "click", 1.0), ("d", "z", 5.0, "click", 1.0), ("e", "z", 6.0, "click", 1.0)]
    assert prequential_ndcg(policy, events, seen, k=2) == pytest.approx(1 / 3)   # e->z: rank 0
    assert seen == {"c": {"z"}, "d": {"z"}, "e": {"z"}}
    assert policy.recommend("f", 2) == ["z", "x"]
