"""The synthetic stream generator: determinism, ground truth, realism, files and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from evaluation.synth import EVENT_COLUMNS, SynthConfig, generate, synth
from evaluation.synth_truth import TruthNotFoundError, load_links, load_truth, sidecar_paths
from evaluation.synth_world import ItemSampler
from fastslow.errors import ConfigError

SMALL = SynthConfig.preset("small", seed=11)


@pytest.fixture(scope="module")
def small_files(tmp_path_factory) -> dict[str, Path]:
    """The small preset written once as Parquet and as CSV (different stems)."""
    root = tmp_path_factory.mktemp("synth")
    paths = {"parquet": root / "small.parquet", "csv": root / "small_csv.csv"}
    for path in paths.values():
        synth(path, SMALL)
    return paths


@pytest.fixture(scope="module")
def small_events(small_files) -> pd.DataFrame:
    return pd.read_parquet(small_files["parquet"])


def _file_bytes(path: Path) -> dict[str, bytes]:
    side = sidecar_paths(path)
    return {p.name: p.read_bytes() for p in (path, side.truth, side.items, side.links)}


@pytest.mark.parametrize("name", ["s.parquet", "s.csv", "s.csv.gz"])
def test_same_seed_gives_byte_identical_files(tmp_path, name):
    config = SynthConfig.preset("tiny", seed=4)
    first, second = tmp_path / "a" / name, tmp_path / "b" / name
    synth(first, config)
    synth(second, config)
    assert _file_bytes(first) == _file_bytes(second)


def test_different_seed_gives_different_stream():
    a = generate(SynthConfig.preset("tiny", seed=1)).events_table()
    b = generate(SynthConfig.preset("tiny", seed=2)).events_table()
    assert a.column("item_id").to_pylist() != b.column("item_id").to_pylist()
    assert a.column("timestamp").to_pylist() != b.column("timestamp").to_pylist()


def test_catalogue_and_users_do_not_depend_on_event_count():
    short = generate(SynthConfig.preset("tiny", n_events=1_000))
    long = generate(SynthConfig.preset("tiny", n_events=5_000))
    assert short.items_table().equals(long.items_table())
    assert np.array_equal(short.world.user_favourites, long.world.user_favourites)


def test_events_are_sorted_and_follow_the_contract(small_events):
    assert list(small_events.columns) == EVENT_COLUMNS
    assert len(small_events) == SMALL.n_events
    assert small_events["event_id"].is_unique
    assert small_events["timestamp"].is_monotonic_increasing
    assert str(small_events["timestamp"].dt.tz) == "UTC"
    assert set(small_events["event_type"]) == {"view", "click", "cart", "purchase"}
    shares = small_events["event_type"].value_counts(normalize=True)
    assert shares["view"] > shares["click"] > shares["cart"] > shares["purchase"] > 0.005
    quantity = small_events.loc[small_events["event_type"].isin(["cart", "purchase"]), "value"]
    assert (quantity >= 1).all() and (quantity % 1 == 0).all() and quantity.max() > 1
    assert (small_events.loc[small_events["event_type"].isin(["view", "click"]), "value"] == 1.0).all()


def test_shifted_users_switch_to_a_never_seen_category(small_files, small_events):
    truth = load_truth(small_files["parquet"])
    assert len(truth.shifts) == round(SMALL.shift_fraction * SMALL.n_users)
    category = small_events["item_id"].map(truth.item_category)
    seconds = small_events["timestamp"].astype("int64") / 1000
    post_shares = []
    for user, shift in truth.shifts.items():
        mine = (small_events["user_id"] == user).to_numpy()
        after = mine & (seconds >= shift.time).to_numpy()
        before = mine & ~after
        assert shift.new_category not in shift.old_categories
        assert (category[before] != shift.new_category).all(), user  # never before the shift
        assert after.sum() == shift.post_events >= SMALL.min_post_shift_events
        assert before.sum() == shift.pre_events >= SMALL.min_pre_shift_events
        post_shares.append((category[after] == shift.new_category).mean())
    assert np.mean(post_shares) > 0.6  # mostly the new favourite after the shift
    assert np.median(post_shares) > 0.5


def test_unshifted_users_keep_to_their_favourite_categories():
    stream = generate(SMALL)
    w, ev = stream.world, stream.events
    shifted = np.isin(ev.user, stream.shifts.user)
    liked = (w.user_favourites[ev.user] == w.item_category[ev.item][:, None]).any(axis=1)
    assert liked[~shifted].mean() > 0.7
    # taste, not global popularity: a user's top category dominates them but not everyone
    top_share = pd.Series(w.item_category[ev.item]).value_counts(normalize=True).iloc[0]
    assert top_share < 0.3


def test_items_never_appear_before_they_are_introduced(small_files, small_events):
    items = pq.read_table(sidecar_paths(small_files["parquet"]).items).to_pandas()
    assert list(items.columns) == ["item_id", "category", "price", "introduced_at"]
    assert (items["price"] > 0).all()
    joined = small_events.merge(items, on="item_id", how="left", validate="many_to_one")
    assert joined["introduced_at"].notna().all()
    assert (joined["timestamp"] >= joined["introduced_at"]).all()
    start = pd.Timestamp(SMALL.start)
    new = items["introduced_at"] > start
    assert new.mean() == pytest.approx(SMALL.new_item_fraction, abs=0.01)
    assert joined["item_id"].isin(items.loc[new, "item_id"]).mean() > 0.02  # new items do get used


def test_popularity_is_zipf_like(small_events):
    counts = small_events["item_id"].value_counts().to_numpy()
    total = counts.sum()
    top1 = counts[: SMALL.n_items // 100].sum() / total
    top10 = counts[: SMALL.n_items // 10].sum() / total
    assert top1 > 0.1  # 1% of the items carry more than 10x their share
    assert top10 > 0.4
    per_user = small_events["user_id"].value_counts()
    assert per_user.max() > 8 * per_user.median()  # heavy-tailed activity


def test_planted_links_carry_sequential_signal(small_files, small_events):
    links = load_links(small_files["parquet"])
    assert all(len(nxt) == SMALL.n_next for nxt in links.values())
    ev = small_events.sort_values(["user_id", "timestamp"], kind="stable")
    same_user = ev["user_id"].to_numpy()[1:] == ev["user_id"].to_numpy()[:-1]
    gap = np.diff(ev["timestamp"].astype("int64").to_numpy()) / 1000
    items = ev["item_id"].to_numpy()
    pairs = same_user & (gap < 1800) & (items[1:] != items[:-1])
    on_link = [nxt in links[prev] for prev, nxt in zip(items[:-1][pairs], items[1:][pairs])]
    chance = SMALL.n_next / SMALL.n_items
    assert np.mean(on_link) > 0.25 > 100 * chance


def test_item_sampler_draws_in_proportion_to_popularity():
    sampler = ItemSampler(np.array([0, 0, 1]), np.array([0, 0, 0]), np.array([1.0, 3.0, 5.0]), 2)
    draws = sampler.sample(np.zeros(40_000, int), np.zeros(40_000, int), np.random.default_rng(0))
    assert set(draws.tolist()) == {0, 1}
    assert (draws == 1).mean() == pytest.approx(3.0 / 4.0, abs=0.01)


def test_csv_and_parquet_hold_the_same_events(small_files, small_events):
    from_csv = pd.read_csv(small_files["csv"])
    assert list(from_csv.columns) == EVENT_COLUMNS
    assert from_csv["timestamp"].iloc[0].endswith("Z") and "T" in from_csv["timestamp"].iloc[0]
    from_csv["timestamp"] = pd.to_datetime(from_csv["timestamp"], utc=True).dt.as_unit("ms")
    pd.testing.assert_frame_equal(from_csv, small_events, check_dtype=False)


def test_truth_round_trips_through_the_sidecar(small_files):
    loaded = load_truth(small_files["parquet"])
    assert loaded == generate(SMALL).truth()
    some_user, shift = next(iter(loaded.shifts.items()))
    assert shift.time_iso.endswith("Z")
    assert pd.Timestamp(shift.time_iso).timestamp() == shift.time
    new_item = next(iter(loaded.category_items(shift.new_category)))
    assert loaded.is_new_taste(some_user, new_item)
    assert json.loads(sidecar_paths(small_files["csv"]).truth.read_text())["events_file"] == "small_csv.csv"


def test_missing_sidecar_names_the_file(tmp_path):
    with pytest.raises(TruthNotFoundError, match=r"events\.truth\.json does not exist.*fastslow synth"):
        load_truth(tmp_path / "events.csv.gz")


@pytest.mark.parametrize("field, value", [("n_users", 0), ("shift_fraction", 1.5), ("p_next", -0.1),
                                          ("start", "yesterday"), ("favourites", 50)])
def test_bad_configuration_names_the_setting(field, value):
    with pytest.raises(ConfigError, match=field):
        SynthConfig(**{field: value})


def test_unknown_output_format_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"\.parquet, \.pq, \.csv or \.csv\.gz"):
        synth(tmp_path / "out.json", SynthConfig.preset("tiny"))


def test_cli_writes_stream_and_prints_summary(tmp_path):
    from fastslow.cli import app

    out = tmp_path / "cli.csv.gz"
    result = CliRunner().invoke(app, ["synth", str(out), "--preset", "tiny", "--events", "2000",
                                      "--users", "80", "--shift-fraction", "0.1", "--seed", "3"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["events"], summary["items"], summary["shifted_users"], summary["path"]) == (2000, 300, 8, str(out))
    assert len(pd.read_csv(out)) == 2000
    assert load_truth(out).params["seed"] == 3
