"""Context for the slow ranker: Feast features of 1 user + N candidate items as numeric arrays.

`FeatureContext.lookup(user_id, item_ids)` reads the online store once per view
(`features.store.FeatureStoreClient.lookup`) and encodes the values as
`models.slow.ContextArrays`: ``user`` (n_user,), ``items`` (N, n_item) and ``categories`` (N,).
`training_context(events)` encodes a point-in-time training frame
(`features.training.training_frame`: each event sees only feature rows from before it) the
same way, one row per event, for `models.slow.Examples.with_context`.

Encoding (`ContextSpec`; a pure function of the feature values, so a training frame and an
online lookup encode alike, and a feature with no value encodes as 0):

* user: ``log1p`` of ``events_1h``, ``events_1d``, ``distinct_items_1d`` and of the gap to the
  previous event (``seconds_since_prev``), ``has_prev`` (1 if there was a previous event),
  and ``last_event_type`` one-hot over view/click/cart/purchase/rating/skip;
* item: ``log1p`` of ``pop_short``, ``pop_long``, ``pop_trend``; ``price`` standardised on the
  log scale, ``(log1p(price) - price_mean) / price_std`` (0 without a price; the two constants
  are fitted on a catalogue with `ContextSpec.fit_price` and travel with the spec, hence with
  the model); ``has_price``;
* category: hashed to a fixed number of buckets, ``1 + crc32(category) % (categories - 1)``,
  bucket 0 meaning "no category"; the ranker learns one embedding per bucket. Hashing was
  chosen over a growing vocabulary so the table never grows, a category first seen at serving
  time still gets a (possibly shared) embedding, and the spec stays a few numbers. With the
  default 4096 buckets, 50 categories share a bucket with probability ~0.3 (a shared bucket
  blends two categories' embeddings); raise `categories` for large taxonomies.

User attributes (segment, country) and ``last_item`` are not encoded: no log we replay
carries the former, and the ranker's user tower already reads the recent items.

Missing features fall back to the feature store's defaults (`features.schema`); `missing`
counts, per view, the entity reads of lookups that had no row (a cached answer counts again).

Caching (``cache=True``): answers are kept per user and per item and dropped exactly when the
client writes that key (`FeatureStoreClient.on_write`), so with one client doing the writes
(a replay, or an in-process worker pushing through the same client) cached answers equal fresh
ones. Do not cache when another process writes the store.

>>> import tempfile, pandas as pd
>>> from features.repository import apply_repo
>>> from features.store import FeatureStoreClient
>>> client = FeatureStoreClient(apply_repo(tempfile.mkdtemp()).repo_path)
>>> t0 = pd.Timestamp("2024-01-01 12:00", tz="UTC")
>>> _ = client.push_events(pd.DataFrame({
...     "user_id": ["u1", "u1"], "item_id": ["a", "b"], "event_type": ["click", "view"],
...     "timestamp": [t0, t0 + pd.Timedelta("5min")],
...     "context": ['{"category": "shoes", "price": 30}', None]}))
>>> provider = FeatureContext(client, ContextSpec(USER_FEATURES, ITEM_FEATURES, price_mean=3.0, price_std=1.0))
>>> ctx = provider.lookup("u1", ["a", "new-item"])
>>> dict(zip(provider.spec.user, ctx.user.astype(float).round(3).tolist()))["events_1h"]  # log1p(2)
1.099
>>> ctx.items[:, provider.spec.item.index("price")].astype(float).round(3).tolist()  # log1p(30) - 3
[0.434, 0.0]
>>> ctx.categories.tolist() == [category_bucket("shoes", 4096), 0]
True
>>> dict(provider.missing)
{'user_stream': 0, 'item_stream': 1, 'item_attributes': 1}
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
import pyarrow as pa

from features.store import FeatureStoreClient
from models.slow import ContextArrays

logger = logging.getLogger(__name__)

EVENT_TYPES = ("view", "click", "cart", "purchase", "rating", "skip")
USER_FEATURES = ("events_1h", "events_1d", "distinct_items_1d", "gap", "has_prev",
                 *(f"last_{t}" for t in EVENT_TYPES))
ITEM_FEATURES = ("pop_short", "pop_long", "pop_trend", "price", "has_price")
#: What a new slow model reads by default: the items' attributes (price and category), not the
#: streaming windows. Measured on the synthetic stream (30k events, `slow` vs `slow+features`,
#: NDCG@10): without context 0.0392; attributes only 0.0406; attributes plus the user windows
#: 0.0356; everything 0.0276. The windows (events in the last hour, popularity, trend) describe
#: what just happened, which the fast path already scores from the stream itself; in the slow
#: model they shift between a training frame's point in time and serving, and cost more than
#: they add. A spec naming them still works (`ContextSpec(user=USER_FEATURES, item=ITEM_FEATURES)`).
DEFAULT_USER_FEATURES: tuple[str, ...] = ()
DEFAULT_ITEM_FEATURES = ("price", "has_price")
#: Views whose rows the user / item parts read (for the missing counters and the cache).
USER_VIEWS = ("user_stream",)
ITEM_VIEWS = ("item_stream", "item_attributes")


@lru_cache(maxsize=100_000)
def category_bucket(category: str, buckets: int) -> int:
    """Embedding bucket of a category: 0 for none, else 1 + crc32 % (buckets - 1).

    >>> category_bucket("", 16), category_bucket("shoes", 16) == category_bucket("shoes", 16)
    (0, True)
    """
    if not category or buckets < 2:
        return 0
    return 1 + zlib.crc32(category.encode()) % (buckets - 1)


@dataclass(frozen=True)
class ContextSpec:
    """How feature values become the ranker's context arrays (see the module docstring).

    Stored with the model as a plain dict (`as_dict`: the ranker's ``context`` argument), so
    serving rebuilds exactly the inputs the model was trained on (`from_dict`).
    """

    user: tuple[str, ...] = DEFAULT_USER_FEATURES
    item: tuple[str, ...] = DEFAULT_ITEM_FEATURES
    categories: int = 4096
    price_mean: float = 0.0
    price_std: float = 1.0

    def as_dict(self) -> dict:
        """JSON-able form (the `models.slow.SlowRanker` ``context`` argument)."""
        out = asdict(self)
        out.update(user=list(self.user), item=list(self.item))
        return out

    @classmethod
    def from_dict(cls, spec: dict) -> ContextSpec:
        """Inverse of `as_dict`; checks the feature names are ones this module encodes."""
        user, item = tuple(spec.get("user", ())), tuple(spec.get("item", ()))
        unknown = [f for f in user if f not in USER_FEATURES] + [f for f in item if f not in ITEM_FEATURES]
        if unknown:
            raise ValueError(f"context spec names features {unknown} that features.context does not "
                             f"encode (user: {list(USER_FEATURES)}, item: {list(ITEM_FEATURES)})")
        return cls(user, item, int(spec.get("categories", 0)), float(spec.get("price_mean", 0.0)),
                   float(spec.get("price_std", 1.0)))

    def fit_price(self, prices: Sequence[float] | np.ndarray) -> ContextSpec:
        """This spec with ``price_mean``/``price_std`` of ``log1p(price)`` over positive prices.

        >>> ContextSpec().fit_price([np.e - 1, np.e ** 3 - 1, 0.0]).price_mean   # log1p: 1 and 3
        2.0
        """
        logs = np.log1p(np.asarray(prices, np.float64))
        logs = logs[np.isfinite(logs) & (logs > 0)]
        if not len(logs):
            return self
        std = float(logs.std())
        return ContextSpec(self.user, self.item, self.categories, float(logs.mean()), std if std > 0 else 1.0)


def _log1p(values) -> np.ndarray:
    return np.log1p(np.maximum(np.asarray(values, np.float64), 0.0))


def encode_user(spec: ContextSpec, values: dict[str, np.ndarray]) -> np.ndarray:
    """(n, n_user) float32 from user feature columns (feature name -> array of n values)."""
    gap = np.asarray(values["seconds_since_prev"], np.float64)
    last = np.asarray(values["last_event_type"], dtype=object)
    columns = {"events_1h": _log1p(values["events_1h"]), "events_1d": _log1p(values["events_1d"]),
               "distinct_items_1d": _log1p(values["distinct_items_1d"]), "gap": _log1p(gap),
               "has_prev": (gap >= 0).astype(np.float64)}
    columns.update({f"last_{t}": (last == t).astype(np.float64) for t in EVENT_TYPES})
    n = len(gap)
    return np.column_stack([columns[f] for f in spec.user] or [np.zeros((n, 0))]).astype(np.float32)


def encode_items(spec: ContextSpec, values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """((n, n_item) float32, (n,) int64 category buckets) from item feature columns."""
    price = np.asarray(values["price"], np.float64)
    has_price = price > 0
    columns = {"pop_short": _log1p(values["pop_short"]), "pop_long": _log1p(values["pop_long"]),
               "pop_trend": _log1p(values["pop_trend"]),
               "price": np.where(has_price, (_log1p(price) - spec.price_mean) / spec.price_std, 0.0),
               "has_price": has_price.astype(np.float64)}
    n = len(price)
    numeric = np.column_stack([columns[f] for f in spec.item] or [np.zeros((n, 0))]).astype(np.float32)
    categories = np.fromiter((category_bucket(str(c), spec.categories) for c in values["category"]),
                             dtype=np.int64, count=n)
    return numeric, categories


@dataclass
class _Cache:
    users: dict[str, tuple[np.ndarray, dict[str, bool]]] = field(default_factory=dict)
    items: dict[str, tuple[np.ndarray, int, tuple[bool, ...]]] = field(default_factory=dict)

    def drop(self, view: str, keys: list[str]) -> None:
        table = self.users if view in USER_VIEWS else self.items if view in ITEM_VIEWS else None
        if table is not None:
            for key in keys:
                table.pop(key, None)


def _as_spec(spec: ContextSpec | dict | None) -> ContextSpec:
    """A `ContextSpec` from one, from a ranker's ``context`` dict, or the default for None."""
    return spec if isinstance(spec, ContextSpec) else ContextSpec.from_dict(spec) if spec else ContextSpec()


class FeatureContext:
    """Context arrays for the slow ranker from a feature store client (module docstring).

    Parameters
    ----------
    client
        The feature store to read (online lookups, point-in-time training frames).
    spec
        The encoding: a `ContextSpec`, or a ranker's ``context`` dict (serve a model with the
        encoding it was trained with: ``FeatureContext(client, ranker.context)``).
    cache
        Keep answers per key until the client writes that key (see the module docstring).
    """

    def __init__(self, client: FeatureStoreClient, spec: ContextSpec | dict | None = None,
                 cache: bool = False) -> None:
        self.client = client
        self.spec = _as_spec(spec)
        self.cache = cache
        self.missing: Counter[str] = Counter({v: 0 for v in (*USER_VIEWS, *ITEM_VIEWS)})
        self.lookups = 0
        """Online reads made: one per user read and one per batch of items read (cached answers are not reads)."""
        self._cache = _Cache()
        if cache:
            client.on_write(self._cache.drop)

    def with_spec(self, spec: ContextSpec | dict | None) -> FeatureContext:
        """This store read with another encoding (a ranker's ``context``): self if it is the same.

        A model is trained and served with the encoding it was built with, whatever spec the
        caller's provider was made with.
        """
        spec = _as_spec(spec)
        return self if spec == self.spec else FeatureContext(self.client, spec)

    # ---- serving -------------------------------------------------------------------------

    def lookup(self, user_id: str, item_ids: Sequence[str]) -> ContextArrays:
        """Context of `user_id` and of `item_ids` (in that order): one online read per view."""
        items, categories = self.items(item_ids)
        return ContextArrays(self.user(user_id), items, categories)

    def user(self, user_id: str) -> np.ndarray:
        """(n_user,) context of one user."""
        hit = self._cache.users.get(user_id) if self.cache else None
        if hit is None:
            self.lookups += 1
            context = self.client.lookup(user_id, [])
            values = {k: np.array([v], dtype=object if isinstance(v, str) else None)
                      for k, v in context.user.items()}
            hit = (encode_user(self.spec, values)[0], {v: bool(context.user_found[v]) for v in USER_VIEWS})
            if self.cache:
                self._cache.users[user_id] = hit
        for view, found in hit[1].items():
            self.missing[view] += not found
        return hit[0]

    def items(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """((N, n_item) numeric, (N,) category buckets) of items, in order."""
        item_ids = list(item_ids)
        if not self.cache:
            numeric, categories, found = self._read_items(item_ids)
            self._count_items(found)
            return numeric, categories
        cached = self._cache.items
        todo = list(dict.fromkeys(i for i in item_ids if i not in cached))
        if todo:
            numeric, categories, found = self._read_items(todo)
            for k, item in enumerate(todo):
                cached[item] = (numeric[k], int(categories[k]), tuple(bool(f[k]) for f in found.values()))
        hits = [cached[i] for i in item_ids]
        numeric = (np.stack([h[0] for h in hits]) if hits
                   else np.zeros((0, len(self.spec.item)), np.float32))
        categories = np.fromiter((h[1] for h in hits), dtype=np.int64, count=len(hits))
        flags = np.array([h[2] for h in hits], dtype=bool).reshape(len(hits), len(ITEM_VIEWS))
        self._count_items({v: flags[:, k] for k, v in enumerate(ITEM_VIEWS)})
        return numeric, categories

    def _read_items(self, item_ids: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        self.lookups += 1
        values, found = self.client.lookup_items(item_ids)
        numeric, categories = encode_items(self.spec, values)
        return numeric, categories, {v: found[v] for v in ITEM_VIEWS}

    def _count_items(self, found: dict[str, np.ndarray]) -> None:
        for view, mask in found.items():
            self.missing[view] += int(len(mask) - np.count_nonzero(mask))

    # ---- training ------------------------------------------------------------------------

    def training_context(self, events: pa.Table | pd.DataFrame) -> ContextArrays:
        """Per-event context as of just before each event (point in time), in event order.

        ``user`` is (n, n_user), ``items`` (n, n_item) and ``categories`` (n,): the arrays
        `models.slow.Examples.with_context` takes for examples built from the same events.
        """
        frame = self.client.training_frame(events)
        items, categories = encode_items(self.spec, {c: frame[c].to_numpy() for c in
                                                     ("pop_short", "pop_long", "pop_trend", "price", "category")})
        user = encode_user(self.spec, {c: frame[c].to_numpy() for c in
                                       ("events_1h", "events_1d", "distinct_items_1d", "seconds_since_prev",
                                        "last_event_type")})
        logger.info("training context for %d events; defaults per view: %s", len(frame), frame.attrs["defaults"])
        return ContextArrays(user, items, categories)

    def item_history(self, item_ids: Sequence[str] | None = None
                     ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """Every change of items' context in the offline store, encoded, for negatives in training.

        Returns (item ids, (n, n_item) numeric, (n,) categories, (n,) unix seconds from which
        each holds), one entry per offline row of an item view (all items, or `item_ids`),
        each carrying the item's latest values of every item view as of that row: what
        `models.slow.SlowRanker.set_item_table` takes.
        """
        from features.offline import OfflineLog
        from features.schema import TIMESTAMP, VIEWS

        log = OfflineLog(self.client.repo_dir)
        rows = pd.concat([log.read(view).to_pandas() for view in ITEM_VIEWS], ignore_index=True)
        if item_ids is not None:
            rows = rows[rows["item_id"].isin(set(item_ids))]
        rows = rows.sort_values(["item_id", TIMESTAMP], kind="stable").reset_index(drop=True)
        defaults = {f: d for view in ITEM_VIEWS for f, d in VIEWS[view].defaults.items()}
        rows[list(defaults)] = rows.groupby("item_id", sort=False)[list(defaults)].ffill()
        values = {f: rows[f].fillna(d).to_numpy() for f, d in defaults.items()}
        numeric, categories = encode_items(self.spec, values)
        times = ((pd.to_datetime(rows[TIMESTAMP], utc=True) - pd.Timestamp(0, tz="UTC"))
                 / pd.Timedelta(seconds=1)).to_numpy(np.float64)
        return rows["item_id"].astype(str).tolist(), numeric, categories, times


class ItemTable:
    """Context of a growing list of items as whole arrays, re-read only where the store changed.

    For scoring a full catalogue per request (the `slow` replay policy ranks every item it
    knows): rows are appended with `add`, and `arrays()` re-reads, in one online lookup, the
    items the client wrote since the last call (`FeatureStoreClient.on_write`), so the arrays
    always equal a fresh lookup of every item.
    """

    def __init__(self, provider: FeatureContext) -> None:
        from models.vocab import Vocab

        self.provider = provider
        self.ids = Vocab()
        self._numeric = np.zeros((0, len(provider.spec.item)), np.float32)
        self._categories = np.zeros(0, np.int64)
        self._dirty: set[int] = set()
        self.version = 0
        """Changes whenever `arrays` would return different values (rows added or re-read)."""
        provider.client.on_write(self._changed)

    def _changed(self, view: str, keys: list[str]) -> None:
        if view in ITEM_VIEWS:
            for key in keys:
                row = self.ids.get(key)
                if row >= 0:
                    self._dirty.add(row)

    def add(self, item_ids: Sequence[str]) -> None:
        """Append the items not in the table yet (read at the next `arrays`)."""
        for item in item_ids:
            if item not in self.ids:
                self._dirty.add(self.ids.add(item))

    def __len__(self) -> int:
        return len(self.ids)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """((n, n_item) numeric, (n,) categories) of every item, in the order they were added."""
        n = len(self.ids)
        if len(self._numeric) < n:
            grown = np.zeros((max(n, 2 * len(self._numeric)), self._numeric.shape[1]), np.float32)
            grown[: len(self._numeric)] = self._numeric
            cats = np.zeros(len(grown), np.int64)
            cats[: len(self._categories)] = self._categories
            self._numeric, self._categories = grown, cats
        if self._dirty:
            self.version += 1
            rows = np.array(sorted(self._dirty), dtype=np.int64)
            self._dirty.clear()
            numeric, categories = self.provider.items([self.ids.id_of(int(r)) for r in rows])
            self._numeric[rows], self._categories[rows] = numeric, categories
        return self._numeric[:n], self._categories[:n]
