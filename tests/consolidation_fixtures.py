"""Helpers shared by the consolidation tests: clustered event streams and fresh MLflow stores.

Creating MLflow's sqlite schema takes seconds, so the first call builds an empty store once
into a template folder and every test gets a copy of the file (milliseconds).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from consolidation.registry import ModelRegistry, default_tracking_uri
from models.slow import SlowRanker

T0_MS = 1_714_521_600_000  # 2024-05-01T00:00Z
DAY_MS = 86_400_000


@functools.lru_cache(maxsize=1)
def _template_db() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="mlflow-template-"))
    ModelRegistry(default_tracking_uri(folder), "template").client.search_experiments()
    return folder / "mlflow.db"


def fresh_tracking_uri(folder: Path) -> str:
    """A sqlite tracking URI in ``folder`` holding an empty, migrated MLflow store."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template_db(), folder / "mlflow.db")
    return default_tracking_uri(folder)


def cluster_events(*, users: int = 40, clusters: int = 4, items: int = 8, per_user: int = 12, start_ms: int = T0_MS,
                   days: float = 1.0, item_prefix: str = "i", first_id: int = 0, seed: int = 0) -> pa.Table:
    """Users stick to one cluster of items each: user u likes cluster u % clusters.

    Items are named ``{item_prefix}{cluster}-{k}``; events are spread evenly over ``days``
    from ``start_ms`` in a shuffled user order.
    """
    rng = np.random.default_rng(seed)
    owners = np.repeat(np.arange(users), per_user)
    rng.shuffle(owners)
    picks = rng.integers(0, items, len(owners))
    times = start_ms + np.linspace(0, days * DAY_MS, len(owners), endpoint=False).astype(np.int64)
    n = len(owners)
    return pa.table({
        "event_id": [f"e{first_id + k}" for k in range(n)],
        "user_id": [f"u{u}" for u in owners],
        "item_id": [f"{item_prefix}{u % clusters}-{p}" for u, p in zip(owners, picks)],
        "timestamp": pa.array(times, pa.int64()).cast(pa.timestamp("ms", "UTC")),
        "event_type": ["click"] * n, "value": [1.0] * n,
    })


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models train faster on one thread, and far faster when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def trained_ranker(events: pa.Table, **params) -> SlowRanker:
    """A small SlowRanker fitted on ``events`` (time order)."""
    ranker = SlowRanker(**{"dim": 16, "epochs": 20, "batch_size": 64, **params})
    ranker.fit(ranker.build_examples(events.column("user_id").to_pylist(), events.column("item_id").to_pylist()))
    return ranker
