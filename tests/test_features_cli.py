"""`fastslow features ...` and `fastslow bench features`, and the repository definitions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fastslow.cli import app
from fastslow.errors import ConfigError
from features.repository import redis_connection_string, write_repo_config
from features.schema import VIEWS


@pytest.mark.slow  # imports Feast (~5 s)
def test_schema_matches_the_feast_definitions():
    from feast.types import Float64, Int64, String

    from features.repo.definitions import FEATURE_VIEWS, item, ranker_context, user

    python_type = {Int64: int, Float64: float, String: str}
    join_key = {user.name: user.join_key, item.name: item.join_key}
    assert [fv.name for fv in FEATURE_VIEWS] == list(VIEWS)
    for fv in FEATURE_VIEWS:
        view = VIEWS[fv.name]
        assert [join_key[e] for e in fv.entities] == [view.key]
        assert {f.name: python_type[f.dtype] for f in fv.features} == {
            name: type(default) for name, default in view.defaults.items()}
    assert [p.name for p in ranker_context.feature_view_projections] == list(VIEWS)


def test_repo_config_rejects_bad_settings(tmp_path):
    with pytest.raises(ConfigError, match="feast_online_store"):
        write_repo_config(tmp_path, online_store="dynamo")
    with pytest.raises(ConfigError, match="redis_url"):
        write_repo_config(tmp_path, online_store="redis")
    with pytest.raises(ConfigError, match="redis://"):
        redis_connection_string("127.0.0.1:6379")


def test_sqlite_repo_config_keeps_everything_under_the_repo(tmp_path):
    text = (write_repo_config(tmp_path / "repo") / "feature_store.yaml").read_text()
    assert "path: online.db" in text and "type: file" in text and len(text.splitlines()) <= 12


def test_cli_modules_do_not_import_feast():
    code = "import sys, features.cli, features.bench; print('feast' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_features_apply_then_lookup_from_the_command_line(tmp_path):
    env = {"FASTSLOW_DATA_DIR": str(tmp_path)}
    runner = CliRunner()
    applied = runner.invoke(app, ["features", "apply"], env=env)
    assert applied.exit_code == 0, applied.output
    assert (tmp_path / "feast" / "registry.db").is_file()
    looked = runner.invoke(app, ["features", "lookup", "someone", "a", "b"], env=env)
    assert looked.exit_code == 0, looked.output
    result = json.loads(looked.output.strip().splitlines()[-1])
    assert result["user"]["events_1h"] == 0 and result["items"]["pop_short"] == [0, 0]
    assert result["items_found"]["item_stream"] == [False, False]


@pytest.mark.slow
def test_bench_features_prints_latency_json_last():
    out = CliRunner().invoke(app, ["bench", "features", "--json", "--users", "100", "--items",
                                   "300", "--events", "2000", "--lookups", "60"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output.strip().splitlines()[-1])
    assert result["candidates"] == 200 and result["lookup_ms"]["n"] == 60
    assert 0 < result["lookup_ms"]["p50"] <= result["lookup_ms"]["p99"]
    assert result["missing"]["item_stream"] == 0
