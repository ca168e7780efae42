"""`fastslow serve` as users run it: refusals with clear messages, and a real server process
that serves, is stopped by Ctrl-C / SIGTERM with its worker snapshotted, and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from consolidation_fixtures import fresh_tracking_uri, one_torch_thread  # noqa: F401 (autouse)
from serving_fixtures import clustered_ranker, event, wait_for
from typer.testing import CliRunner

from fastslow.cli import app
from infra.broker import EmbeddedBroker
from infra.services import free_port


def _env(tmp_path, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTSLOW_")}
    return {**env, "FASTSLOW_DATA_DIR": str(tmp_path), **extra}


def test_serve_refuses_a_public_address_without_an_api_key(tmp_path):
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"], env=_env(tmp_path))
    assert result.exit_code == 2
    assert "serve_host='0.0.0.0'" in result.stderr and "set FASTSLOW_API_KEY" in result.stderr


def test_serve_without_a_broker_says_how_to_get_one(tmp_path):
    result = CliRunner().invoke(app, ["serve"], env=_env(tmp_path))
    assert result.exit_code == 2
    assert "fastslow broker" in result.stderr and "--bootstrap-servers" in result.stderr


@pytest.mark.slow
def test_serve_without_a_champion_says_how_to_make_one(tmp_path, broker):
    env = _env(tmp_path, FASTSLOW_MLFLOW_TRACKING_URI=fresh_tracking_uri(tmp_path / "mlflow"))
    result = CliRunner().invoke(app, ["serve", "--bootstrap-servers", broker], env=env)
    assert result.exit_code == 1
    assert "no champion version" in result.stderr and "fastslow consolidate --events LOG" in result.stderr


def _start(env: dict, port: int) -> subprocess.Popen:
    command = Path(sys.executable).parent / "fastslow"
    return subprocess.Popen([str(command), "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop(process: subprocess.Popen, sig: int) -> tuple[str, str]:
    process.send_signal(sig)
    try:
        return process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.slow
def test_serve_process_serves_stops_cleanly_on_signals_and_resumes_its_worker(tmp_path):
    from consolidation.registry import ModelRegistry

    uri = fresh_tracking_uri(tmp_path / "mlflow")
    registry = ModelRegistry(uri, "fastslow-ranker")
    with registry.start_run("cli-test") as run:
        registry.promote(registry.register(registry.log_ranker(clustered_ranker()), run.info.run_id))
    with EmbeddedBroker(port=0, data_dir=tmp_path / "broker", partitions=2, stop_timeout=0.5) as broker:
        env = _env(tmp_path, FASTSLOW_MLFLOW_TRACKING_URI=uri, FASTSLOW_KAFKA_BOOTSTRAP=broker.bootstrap)
        for run_number, sig in enumerate((signal.SIGINT, signal.SIGTERM)):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            process = _start(env, port)
            try:
                wait_for(lambda: _ready(url, process), 90, "fastslow serve to become ready", interval=0.2)
                if run_number == 0:
                    accepted = httpx.post(url + "/events", json=[event("dora", "i2-0", 1), event("dora", "i2-1", 2)])
                    assert accepted.status_code == 202, accepted.text
                wait_for(lambda: not _recommend(url, "dora")["cold_start"], 30, "dora's events to be applied")
                assert _recommend(url, "dora")["model_version"] == 1
            finally:
                out, err = _stop(process, sig)
            assert process.returncode == 0, err[-3000:]
            assert "binding 127.0.0.1 only (loopback)" in err
            summary = json.loads(out.strip().splitlines()[-1])
            assert summary["stopped"] is True and summary["champion_version"] == 1
            assert summary["worker"]["snapshots"] >= 1
            if run_number == 1:  # resumed from the snapshot: dora's state without re-reading her events
                assert "restored worker snapshot of serve-0" in err
                assert summary["worker"]["events_applied"] == 0
    assert (tmp_path / "snapshots").is_dir()


def _ready(url: str, process: subprocess.Popen) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"fastslow serve exited with {process.returncode}: {process.stderr.read()[-3000:]}")
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        time.sleep(0.2)
        return False


def _recommend(url: str, user: str) -> dict:
    response = httpx.get(url + "/recommend", params={"user_id": user, "k": 4}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()
