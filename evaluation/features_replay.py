"""`fastslow replay --features`: Feast context for the policies that can read it, set up per replay.

With ``--features`` every context-capable policy P named on the command line (`slow`,
`finetune`, `ewc`, `fast-slow-frozen`) also runs as ``P+features`` on the same stream, so NDCG@k with
and without features come out of one run side by side. Each ``+features`` policy gets

* a feature repository of its own: a copy of one repository applied once per replay
  (`FeatureSetup`), in a temporary folder removed at the end;
* a `FeatureFeed`: the events the policy has learned are pushed through
  `features.store.FeatureStoreClient.push_events` every ``batch`` events (never an event it
  has not learned: the replay asks for a recommendation before it learns the event), and the
  item catalogue, where the log has one (the synthetic generator's ``<stem>.items.parquet``:
  category, price, introduced_at), is written row by row once the stream reaches each
  item's ``introduced_at`` (the time the row holds from);
* a slow model trained on the warm-up with point-in-time context
  (`features.context.FeatureContext.training_context`: each warm-up event sees the features
  pushed before it), its sampled negatives reading the catalogue as of the end of the
  warm-up;
* online context at scoring (`FeatureContext` lookups, cached exactly per key).

The price standardisation is fitted on the catalogue items introduced by the end of the
warm-up. The policies themselves live in `evaluation.features_policies`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from evaluation.stream import EventStream
from features.context import ContextSpec, FeatureContext
from features.schema import TIMESTAMP
from features.store import FeatureStoreClient
from models.base import Recommender

logger = logging.getLogger(__name__)

#: Policies that read context; ``--features`` adds ``NAME+features`` for each of them.
CONTEXT_POLICIES = ("slow", "finetune", "ewc", "fast-slow-frozen")
SUFFIX = "+features"
#: Events per push in the replay (the worker pushes one polled batch at a time).
DEFAULT_BATCH = 256


def with_feature_variants(policies: list[str]) -> list[str]:
    """The policies plus ``P+features`` right after each context-capable P.

    >>> with_feature_variants(["popularity", "slow", "fast-slow-frozen"])
    ['popularity', 'slow', 'slow+features', 'fast-slow-frozen', 'fast-slow-frozen+features']
    """
    out = []
    for name in policies:
        out.append(name)
        if name in CONTEXT_POLICIES and name + SUFFIX not in policies:
            out.append(name + SUFFIX)
    return out


def _events_table(first_id: int, users, items, timestamps, event_types, values) -> pa.Table:
    millis = np.round(np.asarray(timestamps, dtype=np.float64) * 1000).astype(np.int64)
    return pa.table({
        "event_id": [f"r{first_id + k}" for k in range(len(users))], "user_id": [str(u) for u in users],
        "item_id": [str(i) for i in items], "timestamp": pa.array(millis, pa.int64()).cast(pa.timestamp("ms", "UTC")),
        "event_type": [str(e) for e in event_types], "value": np.asarray(values, dtype=np.float64)})


class FeatureFeed:
    """Pushes what one policy learned to its own feature repository, in micro-batches.

    Parameters
    ----------
    repo
        An applied feature repository (this feed's own).
    spec
        Context encoding for the provider (`features.context.ContextSpec`).
    batch
        Events per push.
    catalogue
        Item attribute rows (``item_id``, ``category``, ``price``, ``introduced_at``) or None.
    """

    def __init__(self, repo: Path, spec: ContextSpec, batch: int = DEFAULT_BATCH,
                 catalogue: pd.DataFrame | None = None) -> None:
        self.repo = repo
        self.batch = batch
        self.client = FeatureStoreClient(repo)
        self.provider = FeatureContext(self.client, spec, cache=True)
        self.pushed = 0
        self._pending: list[list] = [[], [], [], [], []]
        self._catalogue = (None if catalogue is None else
                           catalogue.sort_values("introduced_at", kind="stable").reset_index(drop=True))
        self._catalogue_written = 0

    @property
    def spec(self) -> ContextSpec:
        return self.provider.spec

    def learn(self, user_id: str, item_id: str, timestamp: float, event_type: str, value: float) -> None:
        """Record one learned event; push when ``batch`` are waiting."""
        for column, x in zip(self._pending, (user_id, item_id, timestamp, event_type, value)):
            column.append(x)
        if len(self._pending[0]) >= self.batch:
            self.flush()

    def learn_many(self, users, items, timestamps, event_types, values) -> None:
        """Record many learned events in order (the warm-up), pushing every ``batch``."""
        for start in range(0, len(users), self.batch):
            stop = start + self.batch
            for column, xs in zip(self._pending, (users, items, timestamps, event_types, values)):
                column.extend(list(xs[start:stop]))
            self.flush()

    def flush(self) -> None:
        """Push the waiting events (and catalogue rows introduced by the newest of them)."""
        if not self._pending[0]:
            return
        table = _events_table(self.pushed, *self._pending)
        self._pending = [[], [], [], [], []]
        self._write_catalogue(float(np.max(table["timestamp"].cast(pa.int64()).to_numpy())) / 1000)
        self.client.push_events(table)
        self.pushed += table.num_rows

    def _write_catalogue(self, until_s: float) -> None:
        """Write the catalogue rows of items introduced at or before `until_s` not written yet."""
        if self._catalogue is None:
            return
        stop = int(np.searchsorted(unix_seconds(self._catalogue["introduced_at"]), until_s, side="right"))
        if stop > self._catalogue_written:
            rows = self._catalogue.iloc[self._catalogue_written: stop]
            self.client.write_rows("item_attributes", rows.rename(columns={"introduced_at": TIMESTAMP}))
            self._catalogue_written = stop

    def report(self) -> dict:
        """What the feed did, for the replay's JSON: events pushed, lookups, defaults used."""
        provider = self.provider
        return {"features": {"pushed_events": self.pushed, "push_batch": self.batch, "lookups": provider.lookups,
                             "missing": dict(provider.missing), "rejected_rows": dict(self.client.rejected)}}

    def training_context(self, users, items, timestamps):
        """Point-in-time context of already pushed events (`FeatureContext.training_context`)."""
        n = len(users)
        return self.provider.training_context(_events_table(0, users, items, timestamps, ["click"] * n, np.ones(n)))


def unix_seconds(times: pd.Series) -> np.ndarray:
    """Unix seconds (float) of timezone-aware timestamps.

    >>> unix_seconds(pd.Series(pd.to_datetime([0, 1500], unit="ms", utc=True))).tolist()
    [0.0, 1.5]
    """
    return ((times - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(np.float64)


def read_catalogue(events_path: str | Path | None) -> pd.DataFrame | None:
    """The synthetic log's item table (``<stem>.items.parquet``) if there is one, else None."""
    from evaluation.synth_truth import sidecar_paths

    if events_path is None:
        return None
    path = sidecar_paths(events_path).items
    if not path.exists():
        return None
    frame = pd.read_parquet(path, columns=["item_id", "category", "price", "introduced_at"])
    frame["category"] = frame["category"].astype(str)
    frame["introduced_at"] = pd.to_datetime(frame["introduced_at"], utc=True).astype("datetime64[ms, UTC]")
    logger.info("item catalogue %s: %d items", path, len(frame))
    return frame


class FeatureSetup:
    """What the ``+features`` policies of one replay share; a context manager (removes its folder).

    Parameters
    ----------
    catalogue
        Item attribute rows (`read_catalogue`) or None.
    warmup_until_s
        End of the warm-up (unix seconds): the price scaling is fitted on items introduced by then.
    batch
        Events per push.
    """

    def __init__(self, catalogue: pd.DataFrame | None, warmup_until_s: float, batch: int = DEFAULT_BATCH) -> None:
        from features.repository import apply_repo

        self.catalogue = catalogue
        self.batch = batch
        spec = ContextSpec()
        if catalogue is not None:
            known = unix_seconds(catalogue["introduced_at"]) <= warmup_until_s
            spec = spec.fit_price(catalogue.loc[known, "price"].to_numpy())
        self.spec = spec
        self._dir = Path(tempfile.mkdtemp(prefix="fastslow-replay-features-"))
        self._template = self._dir / "template"
        apply_repo(self._template)
        self._feeds = 0

    def feed(self) -> FeatureFeed:
        """A new feed over a fresh copy of the applied repository."""
        self._feeds += 1
        repo = self._dir / f"repo-{self._feeds}"
        shutil.copytree(self._template, repo)
        return FeatureFeed(repo, self.spec, self.batch, self.catalogue)

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> FeatureSetup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def feature_policy_factory(setup: FeatureSetup) -> Callable[[str, int], Recommender]:
    """``make(name, seed)`` for `evaluation.replay.run_replay`: ``P+features`` names get context."""
    from evaluation.features_policies import make_feature_policy
    from evaluation.policies import make_policy

    def make(name: str, seed: int = 0) -> Recommender:
        if name.endswith(SUFFIX) and name[: -len(SUFFIX)] in CONTEXT_POLICIES:
            return make_feature_policy(name[: -len(SUFFIX)], setup.feed(), seed)
        return make_policy(name, seed=seed)

    return make


def warmup_end_s(stream: EventStream, warmup: float) -> float:
    """Time of the last warm-up event (unix seconds); the stream's start if there is none."""
    from evaluation.protocol import warmup_size

    n = warmup_size(len(stream), warmup)
    return float(stream.timestamps[n - 1]) if n else float(stream.timestamps[0]) if len(stream) else 0.0
