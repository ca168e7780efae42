"""`fastslow bench serve` end to end on a small catalogue: real HTTP, one JSON line with a
result per (items, concurrency) whose figures are consistent."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fastslow.cli import app


@pytest.mark.slow
def test_bench_serve_prints_latency_and_throughput_per_size_and_concurrency():
    result = CliRunner().invoke(app, ["bench", "serve", "--items", "2000", "--concurrency", "1",
                                      "--concurrency", "3", "--requests", "60", "--warmup", "6",
                                      "--events", "3000", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    results = summary["results"]
    assert [(r["items"], r["concurrency"]) for r in results] == [(2000, 1), (2000, 3)]
    for r in results:
        assert r["requests"] == 60 and 0 < r["p50_ms"] <= r["p99_ms"] and r["rps"] > 0
        assert 0 < r["took_p50_ms"] <= r["took_p99_ms"] and r["server_cpu_ms_per_request"] > 0
        assert r["took_p50_ms"] <= r["p50_ms"]  # the server's share is inside the HTTP round trip
    assert [c["n_items"] for c in summary["catalogue"]] == [2000]
    assert summary["target"]["met"] is None  # the 100k-item target size was not run
