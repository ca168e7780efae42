"""The demo runs end to end in a shortened form: broker, features, first model, worker, API,
streaming with probes, a consolidation, the before/after showcase, the report, clean exit."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from evaluation.synth import SynthConfig, synth
from fastslow.demo import DemoConfig, run_demo
from fastslow.settings import Settings
from infra.services import port_open


@pytest.mark.slow
def test_a_short_demo_streams_consolidates_shows_a_change_and_reports(tmp_path):
    log = tmp_path / "log.parquet"
    synth(log, SynthConfig.preset("small", n_events=5_000, seed=1))
    console = Console(record=True, width=100)
    report = run_demo(DemoConfig(events=log, limit=5_000, rate=2_000, epochs=1, probe_every=5),
                      Settings(data_dir=tmp_path / "data"), console)

    assert report["events"]["applied"] >= report["events"]["streamed"] == 3_500   # 30% warm-up
    assert report["events"]["dead_letters"] == 0
    assert report["hr_at_10"]["probes"] == 700 and report["hr_at_10"]["overall"] > 0.0
    consolidation = report["consolidation"]
    assert consolidation["version"] == 2 and consolidation["reason"]
    assert report["champion_version"] == (2 if consolidation["promoted"] else 1)
    showcase = report["showcase"]
    assert showcase["list_changed_after_ms"] is not None
    assert [r["item_id"] for r in showcase["after"]] != [r["item_id"] for r in showcase["before"]]
    written = json.loads((tmp_path / "data" / "demo" / "report.json").read_text())
    assert written["showcase"]["user_id"] == showcase["user_id"]
    assert (tmp_path / "data" / "demo" / "quality.png").stat().st_size > 10_000
    host, port = report["api"].removeprefix("http://").split(":")
    assert not port_open(host, int(port))   # everything it started is stopped
