"""One settings object for the whole system, read from `FASTSLOW_*` environment variables.

Entry points build it (`Settings()`); library code receives the values it needs as arguments
and never reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob fastslow has, its environment variable and its default.

    >>> Settings(data_dir="/tmp/x").data_dir
    PosixPath('/tmp/x')
    """

    model_config = SettingsConfigDict(env_prefix="FASTSLOW_", extra="forbid")

    data_dir: Path = Path(".fastslow")
    """Where local state lives: archive, snapshots, Feast repo data, MLflow db (FASTSLOW_DATA_DIR)."""

    log_level: str = "INFO"
    """Logging level for the command line (FASTSLOW_LOG_LEVEL)."""

    feast_online_store: Literal["sqlite", "redis"] = "sqlite"
    """Feast online store: sqlite file under the data dir, or Redis at redis_url (FASTSLOW_FEAST_ONLINE_STORE)."""

    redis_url: str | None = None
    """Redis for the Feast online store, redis://host:port/db (FASTSLOW_REDIS_URL)."""

    kafka_bootstrap: str | None = None
    """Kafka bootstrap servers of `produce`, `worker` and `serve`, e.g. host:9092; unset, they stop and say to start one with `fastslow broker` (`fastslow demo` and the benchmarks always run their own embedded broker) (FASTSLOW_KAFKA_BOOTSTRAP)."""

    mlflow_tracking_uri: str | None = None
    """MLflow tracking/registry URI; unset: sqlite:///<data_dir>/mlflow.db, artifacts in <data_dir>/mlartifacts (FASTSLOW_MLFLOW_TRACKING_URI)."""

    model_name: str = "fastslow-ranker"
    """Registered model name of the slow ranker; aliases champion/challenger (FASTSLOW_MODEL_NAME)."""

    ewc_lambda: float = 10.0
    """EWC strength lambda in lambda/2 * sum F (theta - theta*)^2; 0 = plain replay (FASTSLOW_EWC_LAMBDA)."""

    ewc_gamma: float = 0.9
    """Online-EWC decay of the previous consolidation's Fisher (FASTSLOW_EWC_GAMMA)."""

    gate_tolerance: float = 0.02
    """Largest relative drop of old-slice NDCG@10 the promotion gate accepts, 0.02 = 2% (FASTSLOW_GATE_TOLERANCE)."""

    replay_sample_size: int = 200_000
    """Events in each consolidation's replay sample (FASTSLOW_REPLAY_SAMPLE_SIZE)."""

    replay_recent_fraction: float = 0.5
    """Share of the replay sample drawn from events since the last consolidation (FASTSLOW_REPLAY_RECENT_FRACTION)."""

    consolidation_epochs: int = 3
    """Training epochs of each consolidation's challenger (FASTSLOW_CONSOLIDATION_EPOCHS)."""

    api_key: SecretStr | None = None
    """Key `fastslow serve` requires in the X-API-Key header of POST and DELETE; unset: loopback only (FASTSLOW_API_KEY)."""

    serve_host: str = "127.0.0.1"
    """Address `fastslow serve` binds; anything but loopback needs api_key (FASTSLOW_SERVE_HOST)."""

    serve_port: int = 8000
    """Port `fastslow serve` listens on (FASTSLOW_SERVE_PORT)."""

    champion_poll_s: float = 5.0
    """Seconds between the server's and the worker's polls of the registry for a new champion (FASTSLOW_CHAMPION_POLL_S)."""

    rate_limit_per_s: float = 1.0
    """Per-user rate limit of the worker: events a user's bucket regains per second of event time; 0 turns limiting off (FASTSLOW_RATE_LIMIT_PER_S)."""

    rate_limit_burst: int = 500
    """Per-user rate limit of the worker: events one user may send at once (FASTSLOW_RATE_LIMIT_BURST)."""

    fault: str | None = None
    """Fault injection for crash tests: point:n SIGKILLs the worker the n-th time it reaches the point, e.g. snapshot:3 (FASTSLOW_FAULT)."""
