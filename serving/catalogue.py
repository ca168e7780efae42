"""A FastSlow over a synthetic catalogue of any size, for serving benchmarks and tests.

How the catalogue is built (`catalogue_model`), so benchmark figures can be read honestly:

1. a synthetic stream (`evaluation.synth`, preset ``small``) of ``events`` events;
2. a `models.slow.SlowRanker` trained briefly on it (``epochs``), which knows the stream's
   items (about 1-2k);
3. its item tables grown to ``n_items``: each extra item gets the trained output and input
   vectors of a random trained item plus Gaussian noise (``noise`` times the trained vectors'
   per-dimension spread) and that item's bias, so the item index holds ``n_items``
   embedding-like vectors in clusters, not uniform noise;
4. a `models.fastslow.FastSlow` over that ranker (which builds the item index), fed the whole
   stream through ``learn_one`` (users get fast state, memory, co-occurrence);
5. every extra item registered in the fast path's item statistics without any event, so the
   per-request arrays are catalogue-sized and every item can be recommended (through the
   item index; extra items have no popularity or co-occurrence).

>>> model, info = catalogue_model(2_000, events=3_000, epochs=1, dim=8)
>>> len(model.slow_model.items), info["stream_items"] < 2_000, len(info["users"]) > 10
(2000, True, True)
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CATALOGUE_PREFIX = "cat-"


def catalogue_model(n_items: int, *, events: int = 20_000, epochs: int = 2, dim: int = 64, noise: float = 0.5,
                    seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """A FastSlow whose slow model and fast path know ``n_items`` items (see the module docstring).

    Returns the model and a description: how it was built, the stream's users (oldest first)
    and the seconds each step took.
    """
    import torch

    from evaluation.synth import SynthConfig, generate
    from models.fastslow import FastSlow
    from models.slow import SlowRanker

    took: dict[str, float] = {}
    started = time.perf_counter()
    config = SynthConfig.preset("small" if events > 3_000 else "tiny", n_events=events, shift_fraction=0.0,
                                seed=seed)
    table = generate(config).events_table()
    users, items = table.column("user_id").to_pylist(), table.column("item_id").to_pylist()
    ranker = SlowRanker(dim=dim, epochs=epochs, seed=seed)
    ranker.fit(ranker.build_examples(users, items))
    stream_items = len(ranker.items)
    took["train_s"] = time.perf_counter() - started
    if n_items < stream_items:
        raise ValueError(f"n_items={n_items}: expected at least the stream's {stream_items} items")
    extra = [f"{CATALOGUE_PREFIX}{k}" for k in range(n_items - stream_items)]
    _grow(ranker, extra, torch, np.random.default_rng(seed), noise)
    took["grow_s"] = time.perf_counter() - started - sum(took.values())
    model = FastSlow(ranker=ranker, seed=seed)
    took["index_s"] = time.perf_counter() - started - sum(took.values())
    stamps = table.column("timestamp").cast("int64").to_numpy() / 1000.0
    for u, i, t, e, v in zip(users, items, stamps.tolist(), table.column("event_type").to_pylist(),
                             table.column("value").to_pylist()):
        model.learn_one(u, i, t, e, v)
    model.flush()
    took["stream_s"] = time.perf_counter() - started - sum(took.values())
    for item in extra:  # no public call adds catalogue items without events (see the module docstring)
        model._register(item)
    took["register_s"] = time.perf_counter() - started - sum(took.values())
    info = {"n_items": n_items, "stream_items": stream_items, "stream_events": len(items),
            "users": list(dict.fromkeys(users)), "dim": dim, "epochs": epochs, "noise": noise,
            "how": "slow ranker trained on a synthetic stream, item tables grown with noisy copies of "
                   "trained item vectors; extra items registered in the fast path without events",
            "seconds": {k: round(v, 2) for k, v in took.items()}}
    logger.info("catalogue of %d items built in %.1f s (%s)", n_items, time.perf_counter() - started,
                info["seconds"])
    return model, info


def _grow(ranker, extra: list[str], torch, rng: np.random.Generator, noise: float) -> None:
    """Add ``extra`` items to ``ranker``, each a noisy copy of a random trained item."""
    if not extra:
        return
    n0 = len(ranker.items)
    for item in extra:
        ranker.items.add(item)
    ranker.build_examples([], [])  # no examples: only grows the net's tables to the vocabulary
    n = len(ranker.items)
    source = torch.as_tensor(rng.integers(0, n0, n - n0))
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    net = ranker.net
    with torch.no_grad():
        for table, offset in ((net.item_out.weight, 0), (net.item_in.weight, 1)):  # item_in row = item + 1
            trained = table[offset: n0 + offset]
            spread = trained.std(dim=0, keepdim=True)
            table[n0 + offset: n + offset] = trained[source] + noise * spread * torch.randn(
                n - n0, table.shape[1], generator=gen)
        net.item_bias.weight[n0:n] = net.item_bias.weight[source]
    ranker.refresh()
