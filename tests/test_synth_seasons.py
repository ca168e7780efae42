"""The `seasons` preset: disjoint hot catalogues that recur, recorded in the ground truth."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from evaluation.synth import SynthConfig, generate
from evaluation.synth_truth import load_truth, sidecar_paths
from fastslow.errors import ConfigError


@pytest.fixture(scope="module")
def seasonal(tmp_path_factory):
    """A 12k-event seasons stream written by the CLI, read back with its truth."""
    from fastslow.cli import app

    out = tmp_path_factory.mktemp("seasons") / "seasons.parquet"
    result = CliRunner().invoke(app, ["synth", str(out), "--preset", "seasons", "--events", "12000",
                                      "--users", "500", "--seed", "2"])
    assert result.exit_code == 0, result.output
    return pd.read_parquet(out), load_truth(out), out


def test_periods_follow_the_schedule_and_recurring_letters_share_one_catalogue(seasonal):
    _, truth, _ = seasonal
    assert "".join(s.season for s in truth.seasons) == "ABACA"
    catalogue = {}
    for s in truth.seasons:
        catalogue.setdefault(s.season, set(s.categories))
        assert set(s.categories) == catalogue[s.season]        # A is the same A each time it returns
    letters = sorted(catalogue)
    for a in letters:
        for b in letters:
            if a < b:
                assert not catalogue[a] & catalogue[b]         # different seasons: disjoint categories
                assert not truth.season_items(0 if a == "A" else 1) & truth.season_items(3)
    starts = [s.start for s in truth.seasons]
    assert starts == sorted(starts) and all(s.end == n.start for s, n in zip(truth.seasons, truth.seasons[1:]))


def test_each_periods_events_are_on_its_catalogue_and_not_on_the_others(seasonal):
    events, truth, _ = seasonal
    seconds = events["timestamp"].dt.as_unit("ms").astype("int64").to_numpy() // 1000
    items = events["item_id"].to_numpy()
    for s in truth.seasons:
        inside = (seconds >= s.start) & (seconds < s.end)
        assert inside.sum() > 1500                              # about a fifth of 12k events each
        on_own = np.isin(items[inside], list(truth.season_items(s.period))).mean()
        assert on_own > 0.9
        for other in truth.seasons:
            if other.season != s.season:
                assert np.isin(items[inside], list(truth.season_items(other.period))).mean() < 0.06
    assert truth.stats["season_catalogue_share"] == pytest.approx([0.97] * 5, abs=0.03)


def test_the_truth_sidecar_records_the_seasons_and_round_trips(seasonal):
    _, truth, out = seasonal
    doc = json.loads(sidecar_paths(out).truth.read_text())
    assert [s["season"] for s in doc["seasons"]] == list("ABACA")
    assert truth == generate(SynthConfig.preset("seasons", n_events=12000, n_users=500, seed=2)).truth()


def test_streams_without_seasons_record_none():
    truth = generate(SynthConfig.preset("tiny")).truth()
    assert truth.seasons == () and "seasons" not in json.loads(truth.to_json("x.csv"))


@pytest.mark.parametrize("overrides, message", [
    ({"shift_fraction": 0.1}, "shift_fraction"),
    ({"seasons": "abaca"}, "capital letters"),
    ({"seasons": "ABCDEFGHIJKLM"}, "= 12 different letters"),
])
def test_bad_season_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        SynthConfig.preset("seasons", **overrides)
