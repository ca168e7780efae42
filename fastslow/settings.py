"""One settings object for the whole system, read from `FASTSLOW_*` environment variables.

Entry points build it (`Settings()`); library code receives the values it needs as arguments
and never reads the environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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
    """Kafka bootstrap servers, e.g. host:9092; unset starts the embedded broker (FASTSLOW_KAFKA_BOOTSTRAP)."""
