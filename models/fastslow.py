"""FastSlow: the product's recommender — a fast path learning every event, over a slow ranker.

`learn_one` (the call the streaming worker and replay both make) does the per-event work that
must happen in order — the gate learns from the list this user was last shown, the item is
counted, the user's recent items are updated — and queues the rest. The queue is applied in
one vectorised `flush` before anything reads the model (a recommendation, a snapshot, an
export) or once it holds `flush_every` events, so a worker applying a batch of thousands pays
the numpy overhead once, and a replay that asks for a recommendation after every event still
sees every event before it. A flush:
- links each item to the user's previous items (co-occurrence, transitions: `StreamStats`);
- takes BPR steps on each user's fast vector against the slow model's frozen item vectors
  (`FastWeights`; a user's events are applied in order, different users side by side);
  with a context source and a slow model trained with item context, those are its id +
  context vectors, which every item the stream has seen has (`models.item_space`);
- stores each event in the episodic memory under the user's vector (`EpisodicMemory`).

Requests are scored by `models.scorer` and blended by the online-learned `Gate`.
"""

from __future__ import annotations

import logging
import pickle
import zlib
from array import array
from collections import OrderedDict, deque
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from models.base import Recommender
from models.fast import FastWeights, UserState
from models.gate import FAST_SIGNALS, Gate
from models.item_index import ItemIndex
from models.item_space import ContextItems, ItemSpace
from models.kernels import splitmix_rows, sum_by_row
from models.memory import EpisodicMemory
from models.scorer import (TRIGGERED, VERBS, Scored, Signals, Sparse, candidate_features, reason_for,
                           sorted_unique, top_positive)
from models.slow import SlowRanker, context_dims
from models.stream_stats import StreamStats
from models.vocab import Vocab

logger = logging.getLogger(__name__)

EVENT_KINDS = ("view", "click", "cart", "purchase", "rating", "skip")
_KIND_CODE = {k: n for n, k in enumerate(EVENT_KINDS)}
#: Divisors of log1p(fast events, idle seconds, co-occurrence, transition, memory strength) in
#: the gate's request features.
_REQUEST_LOG_SCALE = np.array([5.0, 15.0, 5.0, 5.0, 3.0])


@dataclass
class Recommendation:
    """One recommended item with its score, the fast and slow parts, and why."""

    item_id: str
    score: float
    fast: float
    slow: float
    gate: float
    reason: str


def event_seeds(users: list[str], items: list[str], timestamps: np.ndarray) -> np.ndarray:
    """A stable 32-bit seed per event (independent of process, batch and arrival order).

    >>> a = event_seeds(["u", "u"], ["i", "j"], np.array([1.5, 1.5]))
    >>> bool(a[0] != a[1]), bool((a == event_seeds(["u", "u"], ["i", "j"], np.array([1.5, 1.5]))).all())
    (True, True)
    """
    return np.array([zlib.crc32(f"{u}\x1f{i}\x1f{t!r}".encode()) for u, i, t in
                     zip(users, items, timestamps.tolist())], dtype=np.uint64)


def draw_rows(seeds: np.ndarray, count: int, n: int) -> np.ndarray:
    """(len(seeds), count) pseudo-random rows in [0, n), a pure function of the seeds (splitmix64).

    >>> rows = draw_rows(np.array([7, 8], dtype=np.uint64), 3, 10)
    >>> rows.shape, bool((rows == draw_rows(np.array([7, 8], dtype=np.uint64), 3, 10)).all())
    ((2, 3), True)
    """
    return splitmix_rows(np.asarray(seeds, dtype=np.uint64), count, max(n, 1))


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as float32."""
    norms = np.sqrt(np.add.reduce(vectors * vectors, axis=1, keepdims=True))   # np.linalg.norm's own sum
    if len(vectors) == 1:   # one row (every request and one-event flush): a scalar test, no masks
        if not norms[0, 0] > 0:
            norms[0, 0] = 1.0
    else:
        norms[~(norms > 0)] = 1.0
    return (vectors / norms).astype(np.float32, copy=False)


class FastSlow(Recommender):
    """The fast-slow recommender (see the module docstring).

    Parameters
    ----------
    ranker
        The slow model (the current champion). None: `learn_warmup` trains one.
    fixed_gate
        Pin the gate (1.0 = fast path only: the `fast-only` ablation); None learns it.
    negatives
        Sampled negatives per fast-weight update.
    ann_candidates, signal_candidates, memory_k, popular_candidates
        How many candidates each source contributes per request.
    memory_capacity, memory_max_age, memory_half_life
        Episodic memory size, age limit (s) and the half-life (s) of a hit's weight.
    memory_per_user
        Entries one user may hold in the memory (their latest); keeps a very active or
        flooding user from crowding everyone else out.
    flush_every
        Queued events that trigger a flush even if nothing reads the model.
    gate_every
        While learning the warm-up prefix, every `gate_every`-th event is scored before it is
        learned (test-then-learn) so the gate starts from weights fitted to the prefix; after
        that it learns from the lists actually shown (`recommend`/`explain`) and what the user
        did next. 0 skips the warm-up scoring.
    served
        Users whose last shown list is kept for the gate to learn from (least recent dropped).
    catalogue
        Make every item of the slow model a candidate from the first request (a served
        champion's whole catalogue, `register_catalogue`), again after each `use_ranker`;
        False: only items the stream has shown this model (what a prequential replay ranks).
    expire_every
        Events between sweeps that expire idle users and old memory entries.
    fast, stats, gate
        Keyword arguments for `FastWeights`, `StreamStats` and `Gate`.
    seed
        Seed for the slow model trained at warm-up.
    """

    name = "fast-slow"

    def __init__(self, ranker: SlowRanker | None = None, fixed_gate: float | None = None,
                 negatives: int = 4, ann_candidates: int = 100, signal_candidates: int = 100,
                 memory_k: int = 32, popular_candidates: int = 20, memory_capacity: int = 50_000,
                 memory_max_age: float = 7 * 86400.0, memory_half_life: float = 86400.0,
                 memory_per_user: int = 5,
                 flush_every: int = 4096, gate_every: int = 64, served: int = 1024, expire_every: int = 10_000, fast: dict | None = None,
                 stats: dict | None = None, gate: dict | None = None, seed: int = 0, catalogue: bool = False) -> None:
        self.ranker = ranker
        self.fixed_gate = fixed_gate
        self.negatives = negatives
        self.ann_candidates = ann_candidates
        self.signal_candidates = signal_candidates
        self.memory_k = memory_k
        self.popular_candidates = popular_candidates
        self.memory_capacity = memory_capacity
        self.memory_max_age = memory_max_age
        self.memory_half_life = memory_half_life
        self.memory_per_user = memory_per_user
        self.flush_every = flush_every
        self.gate_every = gate_every
        self.served = served
        self.expire_every = expire_every
        self.fast = fast
        self.stats = stats
        self.gate = gate
        self.seed = seed
        self.catalogue = catalogue
        self._ranker = ranker if ranker is not None else SlowRanker(seed=seed)
        self._fast = FastWeights(dim=self._ranker.dim, **(fast or {}))
        self._stats = StreamStats(**(stats or {}))
        self._gate = Gate(fixed_gate=fixed_gate, **(gate or {}))
        self._memory = EpisodicMemory(dim=self._ranker.dim, capacity=memory_capacity, max_age=memory_max_age)
        self._index = ItemIndex()
        self._users = Vocab()
        self._mem_ids: dict[int, deque[int]] = {}         # user row -> its memory entry ids, oldest first
        self._forgotten: set[str] = set()                   # deleted users: the slow model's vector is ignored
        self._slow_rows = np.zeros(0, dtype=np.int64)     # fast item row -> slow row (-1 unknown)
        self._fast_rows = np.zeros(0, dtype=np.int64)     # slow row -> fast item row (-1 unseen)
        self._queue: list[tuple] = []
        self._served: OrderedDict[str, Scored] = OrderedDict()   # user -> the list they were last shown
        self._base_memo: tuple | None = None                # (inputs, vector) of the last slow user vector
        self._trending_rows: np.ndarray | None = None
        self._trending_at = 0
        self.clock = 0.0
        self.events = 0
        self._context = None
        self._context_items: ContextItems | None = None   # id + context item vectors (`_item_space`)
        self._popularity = None
        self._warming = False   # inside learn_warmup: the slow model's scores are in-sample there
        if ranker is not None:
            self.use_ranker(ranker)

    # ------------------------------------------------------------------ the slow model
    @property
    def context(self):
        """Where the model reads context (``items(item_ids) -> (numeric, categories)`` and
        ``user(user_id)``, e.g. a `features.context.FeatureContext`); used when the slow model
        was trained with context. A live connection: it is left out of pickles and snapshots
        (set it again after loading).

        With it, the fast path reads the slow model's id + context item vectors (`_item_space`).
        """
        return self._context

    @context.setter
    def context(self, source) -> None:
        if source is self._context:   # the same source: what was read from it still holds
            return
        self._context = source
        self._context_items = None

    @property
    def popularity(self):
        """Where "popular right now" comes from when it is not this model's own stream (e.g. a
        `streaming.popularity.TopicPopularity` over every partition of the topic, while this
        model learns only some): ``item_scores(item_ids)`` and ``top(n) -> [(item_id, score)]``.
        None: the model's own recency-weighted counts. A live connection: left out of pickles
        and snapshots (set it again after loading).

        It decides the trending candidates and the ``recent_popularity`` signal of every request.
        """
        return self._popularity

    @popularity.setter
    def popularity(self, source) -> None:
        self._popularity = source
        self._trending_rows = None

    @property
    def popularity_half_life(self) -> float:
        """Seconds of event time after which an event counts half in "popular right now"."""
        return self._stats.popularity_half_life

    def trending(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` items this model calls popular right now, with their scores, best first.

        >>> model = FastSlow()
        >>> for t, item in enumerate(["a", "b", "a"]):
        ...     model.learn_one("u", item, 100.0 + t)
        >>> [item for item, _ in model.trending(2)]
        ['a', 'b']
        """
        if self._popularity is not None:
            return self._popularity.top(n)
        self.flush()
        scores = self._stats.recent_popularity(self.clock)
        order = np.argsort(-scores, kind="stable")[:n]
        order = order[scores[order] > 0]
        return list(zip(self._stats.items.ids_of(order), scores[order].tolist()))

    def _recent_popularity(self, rows: np.ndarray) -> np.ndarray:
        """The ``recent_popularity`` signal of item rows, from `popularity` when set."""
        if self._popularity is None:
            return self._stats.recent_popularity(self.clock, rows)
        return self._popularity.item_scores(self._stats.items.ids_of(rows))

    @property
    def slow_model(self) -> SlowRanker:
        """The slow ranker currently serving."""
        return self._ranker

    @staticmethod
    def index_for(ranker: SlowRanker) -> ItemIndex:
        """The item index `use_ranker` needs for `ranker`. Building it takes seconds for large
        catalogues and does not touch the model, so callers build it before taking the lock."""
        return ItemIndex().build(ranker.item_vectors)

    def use_ranker(self, ranker: SlowRanker, keep_fast: float = 1.0, index: ItemIndex | None = None) -> None:
        """Serve with `ranker` from now on: remap items, swap in its item index, rebase fast state.

        `keep_fast` scales every fast vector (0.0 after a consolidation that absorbed them,
        so what the slow model learned is not counted twice). `index` is `index_for(ranker)`
        when the caller built it already. With context, the items' id + context vectors are
        recomputed for `ranker` from the context already read (`ContextItems.rebased`).
        """
        self.flush()
        self._ranker = ranker
        self._base_memo = None
        self._index = index if index is not None else self.index_for(ranker)
        n_slow = len(ranker.items)
        self._slow_rows = np.full(max(1024, self._stats.n_items), -1, dtype=np.int64)
        self._slow_rows[: self._stats.n_items] = ranker.items.lookup(self._stats.items.ids())
        self._slow_rows[self._slow_rows >= n_slow] = -1
        self._fast_rows = np.full(n_slow, -1, dtype=np.int64)
        known = np.flatnonzero(self._slow_rows >= 0)
        self._fast_rows[self._slow_rows[known]] = known
        # the items' context stays as read; their vectors are the new model's (same spec) or rebuilt
        table = self._context_items
        same_spec = table is not None and table.ranker.context == ranker.context
        self._context_items = table.rebased(ranker, self._slow_rows) if same_spec and self._reads_item_context() else None
        if keep_fast != 1.0:
            self._fast.scale_all(keep_fast)
        self._memory.rekey(self._memory_keys, train_vectors=ranker.item_vectors)
        self._served.clear()   # those lists were scored by the previous model
        if getattr(self, "catalogue", False):   # (snapshots from before the option lack it)
            self.register_catalogue()

    def register_catalogue(self) -> int:
        """Register every item of the slow model the stream has not shown yet (uncounted), so
        the item index can return it; returns how many were added.

        >>> ranker = SlowRanker(dim=4, epochs=1)
        >>> _ = ranker.fit(ranker.build_examples(["u", "u", "v"], ["a", "b", "c"]))
        >>> model = FastSlow(ranker=ranker)
        >>> len(model.recommend("w", 3)), model.register_catalogue(), sorted(model.recommend("w", 3))
        (0, 3, ['a', 'b', 'c'])
        """
        missing = np.flatnonzero(self._fast_rows < 0)
        for item_id in self._ranker.items.ids_of(missing):
            self._register(item_id)
        return len(missing)

    def _memory_keys(self, entries) -> np.ndarray:
        """Memory keys under the current model: each entry's user vector as of now."""
        users, inverse = np.unique(entries.users, return_inverse=True)
        vectors = [sum(self._user_vector(self._users.id_of(int(u)))) for u in users]
        keys = np.stack(vectors) if vectors else np.zeros((0, self._ranker.dim), dtype=np.float32)
        return _unit(keys)[inverse]

    def _map_item(self, row: int) -> None:
        if row >= len(self._slow_rows):
            grown = np.full(max(row + 1, 2 * len(self._slow_rows)), -1, dtype=np.int64)
            grown[: len(self._slow_rows)] = self._slow_rows
            self._slow_rows = grown
        slow_row = self._ranker.items.get(self._stats.items.id_of(row))
        if 0 <= slow_row < len(self._fast_rows):
            self._slow_rows[row] = slow_row
            self._fast_rows[slow_row] = row

    def _reads_item_context(self) -> bool:
        """Whether there is a context source and the slow model reads item context (a model
        with user features only keeps the id item vectors)."""
        return self._context is not None and any(context_dims(self._ranker.context)[1:])

    def _item_space(self, touched: np.ndarray | None = None) -> ItemSpace:
        """The item vectors the fast path reads now (`models.item_space`).

        Without item context (no source, or a slow model that reads none): the slow model's
        id vectors and its item index. With it: id + context vectors of every stream item, read
        from the context source for items new since the last call and for `touched` item rows
        (the items of the events being applied: a change of their context is picked up then).
        """
        if not self._reads_item_context():
            ranker = self._ranker
            return ItemSpace(self._slow_rows, self._fast_rows, ranker.item_vectors, ranker.item_biases,
                             self._index, len(ranker.items))
        if self._context_items is None:
            self._context_items = ContextItems(self._ranker)
        table = self._context_items
        rows = np.arange(table.n, self._stats.n_items, dtype=np.int64)
        if touched is not None:
            rows = sorted_unique(np.concatenate([touched[touched < table.n], rows]))
        if len(rows):
            numeric, categories = self._context.items(self._stats.items.ids_of(rows))
            table.update(rows, self._slow_rows[rows], numeric, categories)
        return table.space()

    def _user_context(self, user_id: str, base: np.ndarray) -> np.ndarray:
        """The slow user vector with the user's context part (the id-only `base` when the
        model reads no user features or there is no context source)."""
        if self._context is None or not context_dims(self._ranker.context)[0]:
            return base
        return self._ranker.context_user_vector(base, self._context.user(user_id))

    def _slow_user(self, user_id: str) -> int:
        """The user's row in the slow model; -1 for users it never saw and for forgotten users,
        whose learned vector must not shape their lists any more."""
        return -1 if user_id in self._forgotten else self._ranker.users.get(user_id)

    def slow_knows(self, user_id: str) -> bool:
        """Whether the slow model has a learned vector it uses for this user."""
        return self._slow_user(user_id) >= 0

    def _recent(self, user_id: str) -> np.ndarray:
        state = self._fast.get(user_id)
        return np.frombuffer(state.recent, dtype=np.int64) if state is not None and len(state.recent) \
            else np.zeros(0, dtype=np.int64)

    def _user_vector(self, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(slow user vector, fast vector) for the user now."""
        return self._slow_base(self._slow_user(user_id), self._recent(user_id)), self._fast.vector(user_id, self.clock)

    def _slow_base(self, slow_user: int, history: np.ndarray) -> np.ndarray:
        """The slow user vector for a slow-model user row and the user's item rows (oldest first).

        The last one is kept (read-only) with its inputs: the flush of the event that follows
        a request needs the very same vector (the user's history up to that event). Inputs are
        the slow model's rows, so a mapping or user change misses; `use_ranker` clears it.
        """
        slow_history = self._slow_rows[history]
        key = (slow_user, slow_history.tobytes())
        if self._base_memo is not None and self._base_memo[0] == key:
            return self._base_memo[1]
        vector = self._ranker.user_vector_rows(slow_user, slow_history)
        vector.flags.writeable = False
        self._base_memo = (key, vector)
        return vector

    # ------------------------------------------------------------------ learning
    def learn_one(self, user_id, item_id, timestamp, event_type="click", value=1.0) -> None:
        self._learn_gate(user_id, item_id, float(timestamp))
        state = self._fast.get(user_id)
        history = bytes(state.recent) if state is not None else b""   # the user's rows before this event
        row = self._stats.register(item_id)
        if row >= len(self._slow_rows) or self._slow_rows[row] < 0:
            self._map_item(row)
        self._fast.remember(user_id, row, timestamp)
        self._queue.append((user_id, item_id, row, float(timestamp), _KIND_CODE.get(event_type, 1),
                            float(value), history))
        self.clock = max(self.clock, timestamp)
        self.events += 1
        if len(self._queue) >= self.flush_every:
            self.flush()
        if self.events % self.expire_every == 0:
            self.expire()

    def _learn_gate(self, user_id: str, item_id: str, timestamp: float) -> None:
        """Teach the gate from the list this user was last shown and the item they chose: the
        user's next event and every event of theirs at that same time (simultaneous events, such
        as the items of one basket, were all chosen from that list; a later one was not)."""
        shown = self._served.get(user_id)
        if shown is None:
            return
        if shown.taught_at is None:
            shown.taught_at = timestamp
        elif shown.taught_at != timestamp:
            del self._served[user_id]
            return
        if not len(shown.rows):
            return
        hit = np.flatnonzero(shown.rows == self._stats.items.get(item_id))
        if len(hit):
            self._gate.learn(shown.slow, shown.fast, shown.request, int(hit[0]), weights_only=self._warming)

    def _remember_shown(self, scored: Scored) -> None:
        self._served[scored.user_id] = scored
        self._served.move_to_end(scored.user_id)
        if len(self._served) > self.served:
            self._served.popitem(last=False)

    def flush(self) -> None:
        """Apply every queued event (see the module docstring); cheap when the queue is empty.

        Everything that depends only on the queued events — slow user vectors from each event's
        captured history, the per-event negatives — is computed once for the whole queue; only
        the BPR steps run wave by wave, since a user's fast vector must see their events in order.
        """
        if not self._queue:
            return
        queue, self._queue = self._queue, []
        ranker = self._ranker
        users, items, row_list, time_list, kinds, values, history_bytes = zip(*queue)
        times = np.array(time_list)
        rows = np.array(row_list, dtype=np.int64)
        histories = [np.frombuffer(h, dtype=np.int64) for h in history_bytes]
        self._stats.count(rows, times)
        self._stats.link(histories, rows)
        if len(queue) == 1:   # one event (a replay, an API call): scoring that user just computed it
            base = self._slow_base(self._slow_user(users[0]), histories[0])[None, :]
        else:
            base = ranker.user_vectors_rows(np.array([self._slow_user(u) for u in users]),
                                            [self._slow_rows[h] for h in histories])
        space = self._item_space(touched=rows)
        vector_rows = space.rows[rows]
        learnable = vector_rows >= 0
        negs = np.zeros((len(queue), self.negatives), dtype=np.int64)
        if learnable.any() and space.count:
            on = np.flatnonzero(learnable)
            negs[on] = draw_rows(event_seeds([users[n] for n in on], [items[n] for n in on], times[on]),
                                 self.negatives, space.count)
        keys = base.copy()
        for wave in self._waves(queue):
            wave = np.asarray(wave)
            on, off = wave[learnable[wave]], wave[~learnable[wave]]
            if len(on):
                pos = vector_rows[on]
                keys[on] += self._fast.learn_batch([users[n] for n in on], times[on], base[on],
                                                   space.vectors[pos], space.biases[pos],
                                                   space.vectors[negs[on]], space.biases[negs[on]])
            for n in off.tolist():
                self._fast.touch(users[n], times[n])
                keys[n] += self._fast.vector(users[n], times[n])
        user_rows = [self._users.add(u) for u in users]
        ids = self._memory.add(_unit(keys), rows, np.array(user_rows), times,
                               np.array(kinds, dtype=np.int8), np.array(values, dtype=np.float32))
        self._cap_memory(user_rows, ids)

    def _cap_memory(self, user_rows: list[int], ids: np.ndarray) -> None:
        """Keep each user's latest `memory_per_user` entries, removing older ones in batches.

        A user may briefly hold up to twice the cap (removal rewrites FAISS lists, so it is
        done once per user per `memory_per_user` events); scoring skips the user's own entries.
        """
        drop = []
        for user, entry in zip(user_rows, ids.tolist()):
            mine = self._mem_ids.setdefault(user, deque())
            mine.append(entry)
            if len(mine) >= 2 * self.memory_per_user:
                drop.extend(mine.popleft() for _ in range(len(mine) - self.memory_per_user))
        if drop:
            self._memory.remove(drop)

    @staticmethod
    def _waves(queue: list[tuple]) -> list[list[int]]:
        """Queue positions grouped so each group has distinct users, in each user's order."""
        seen: dict[str, int] = {}
        waves: list[list[int]] = []
        for n, q in enumerate(queue):
            w = seen.get(q[0], 0)
            seen[q[0]] = w + 1
            if w == len(waves):
                waves.append([])
            waves[w].append(n)
        return waves

    def learn_warmup(self, users, items, timestamps, event_types, values) -> None:
        """Train the slow model on the prefix if none was given, then replay the prefix through
        the fast path, scoring every `gate_every`-th event first so the gate learns too: the
        weights of the fast signals only, since the slow model learned this prefix (its scores
        here are in-sample; how much to trust it is learned from the events after)."""
        if self.ranker is None and len(self._ranker.items) == 0:
            self._ranker.fit(self._ranker.build_examples(users, items))
            self.use_ranker(self._ranker)
        self._warming = True
        try:
            for n, (u, i, t, e, v) in enumerate(zip(users, items, timestamps, event_types, values)):
                if self.gate_every and n % self.gate_every == 0 and i in self._stats.items:
                    self._remember_shown(self.score(u, self.history(u)))
                self.learn_one(u, i, float(t), e, float(v))
        finally:
            self._warming = False
        self.flush()
        self._served.clear()

    def expire(self) -> tuple[int, int]:
        """Expire idle users and old memory entries now; returns (users, entries) removed."""
        self.flush()
        return self._fast.expire(self.clock), self._memory.evict(self.clock)

    # ------------------------------------------------------------------ scoring
    def _signals(self, user_id: str) -> Signals:
        base, fast_vec = self._user_vector(user_id)
        recent = self._recent(user_id)
        stats = self._stats
        memory, strength = Sparse(np.zeros(0, np.int64), np.zeros(0)), 0.0
        if len(self._memory):
            # other users' moments: the user's own recent items are already in cooc/transitions
            hits = self._memory.search(_unit((base + fast_vec)[None, :])[0], 2 * self.memory_k)
            others = np.flatnonzero(hits.users != self._users.get(user_id))[: self.memory_k]
            age = np.maximum(self.clock - hits.times[others], 0.0)
            weight = np.maximum(hits.scores[others], 0.0) * np.power(0.5, age / self.memory_half_life)
            memory = Sparse(*sum_by_row(hits.items[others], weight))
            strength = float(weight.sum())
        return Signals(base, fast_vec, Sparse(*stats.cooccurrence_scores(recent)),
                       Sparse(*stats.transition_scores(recent)),
                       self._recent_popularity, memory, strength,
                       Sparse(*stats.knn_scores(recent)), Sparse(*stats.sr_scores(recent)), stats.counts)

    def _candidates(self, sig: Signals, space: ItemSpace, user: np.ndarray, trending: np.ndarray) -> np.ndarray:
        """Candidate item rows; `user` is the slow user vector the item index is searched with
        (plus the fast vector), `trending` the rows of `_trending`."""
        parts = [sig.cooc.top(self.signal_candidates), sig.trans.top(self.signal_candidates),
                 sig.knn.top(self.signal_candidates), sig.sr.top(self.signal_candidates),
                 sig.memory.rows, trending]
        if len(space.index):
            vector_rows, _ = space.index.search(user + sig.fast_vec, self.ann_candidates)
            rows = space.items[vector_rows]
            parts.append(rows[rows >= 0])
        return sorted_unique(np.concatenate(parts).astype(np.int64, copy=False))

    def _fill(self, rows: np.ndarray, excluded: np.ndarray | None, space: ItemSpace, query: np.ndarray,
              k: int) -> np.ndarray:
        """`rows` and more candidates, up to `k` if the model knows that many items outside
        `excluded`: the item index's next nearest items to `query`, then the most popular lately
        (then the lowest rows), so a list never comes back short while items are left."""
        taken = np.zeros(self._stats.n_items + 1, dtype=bool) if excluded is None else excluded.copy()
        taken[rows] = True
        parts = [rows]
        need = k - len(rows)
        if len(space.index):
            skip = space.rows[np.flatnonzero(taken[:-1])]
            found, _ = space.index.search(query, need, exclude_rows=skip[skip >= 0].tolist())
            found = space.items[found]
            found = found[found >= 0]
            found = found[~taken[found]]
            taken[found] = True
            parts.append(found)
            need -= len(found)
        if need > 0:
            free = np.flatnonzero(~taken[:-1])
            parts.append(free[np.argsort(-self._stats.recent_popularity(self.clock, free), kind="stable")[:need]])
        return sorted_unique(np.concatenate(parts).astype(np.int64, copy=False))

    def _trending(self) -> np.ndarray:
        """The most popular items right now, recomputed at most every 100 events (it moves slowly);
        from `popularity` when set (its items registered here, so they can be candidates)."""
        if self._popularity is not None:
            return np.array([self._register(item) for item, _ in self._popularity.top(self.popular_candidates)],
                            dtype=np.int64)
        if self._trending_rows is None or self.events - self._trending_at >= 100:
            self._trending_rows = top_positive(self._stats.recent_popularity(self.clock), self.popular_candidates)
            self._trending_at = self.events
        return self._trending_rows

    def _request(self, user_id: str, sig: Signals) -> np.ndarray:
        state = self._fast.get(user_id)
        recent = self._recent(user_id)
        # one log1p over the five counts (a numpy call per scalar cost more than the rest)
        events, idle = (state.events, max(self.clock - state.updated, 0.0)) if state is not None else (0, 0.0)
        logs = np.log1p(np.array([events, idle, sig.cooc.strength, sig.trans.strength, sig.mem_strength]))
        logs /= _REQUEST_LOG_SCALE
        logs = logs.tolist()   # Python floats: building the array from them is cheaper than from numpy scalars
        return np.array([
            1.0,
            logs[0] if state is not None else 0.0,
            logs[1] if state is not None else 1.0,
            logs[2],
            logs[3],
            logs[4],
            1.0 if self._slow_user(user_id) >= 0 else 0.0,
            np.count_nonzero(self._slow_rows[recent] >= 0) / len(recent) if len(recent) else 0.0,
        ])

    def score(self, user_id: str, exclude: Collection[str] = (), k: int = 0) -> Scored:
        """Score this user's candidates (items in `exclude` left out): at least `k` of them
        whenever the model knows `k` items outside `exclude` (`_fill`)."""
        self.flush()
        trending = self._trending()   # first: with `popularity` it may register items, growing the item space
        sig = self._signals(user_id)
        space = self._item_space()
        user = self._user_context(user_id, sig.base)
        rows = self._candidates(sig, space, user, trending)
        excluded = None
        if exclude:
            # a mask over the catalogue; its extra last slot takes the -1 of ids never seen
            excluded = np.zeros(self._stats.n_items + 1, dtype=bool)
            excluded[self._stats.items.lookup(exclude)] = True
            rows = rows[~excluded[rows]]
        if len(rows) < k:
            rows = self._fill(rows, excluded, space, user + sig.fast_vec, k)
        # with context, items the slow model has no id row for rank below those it has (below_known)
        slow, fast = candidate_features(rows, sig, space.rows, space.vectors, space.biases, user,
                                        known=self._slow_rows[rows] >= 0 if self._reads_item_context() else None)
        request = self._request(user_id, sig)
        g, fast_score, blended = self._gate.parts(slow, fast, request)
        return Scored(user_id, rows, slow, fast, request, g, fast_score, blended)

    def recommend(self, user_id, k, exclude=()) -> list[str]:
        """The top k for the user; the list is remembered so the user's next event teaches the gate."""
        scored = self.score(user_id, exclude, k)
        self._remember_shown(scored)
        return self._stats.items.ids_of(scored.rows[scored.top(k)])

    def explain(self, user_id: str, k: int, exclude: Collection[str] = ()) -> list[Recommendation]:
        """The top k with scores, fast/slow parts and a reason each (what `/recommend` returns).

        A user the model has learned nothing about (no fast state, unknown to the slow model)
        gets `models.scorer.FALLBACK` reasons: what they are shown is not personal yet.
        """
        scored = self.score(user_id, exclude, k)
        self._remember_shown(scored)
        recent = self._recent(user_id)
        personal = user_id in self._fast or self.slow_knows(user_id)
        out = []
        for n in scored.top(k):
            row = int(scored.rows[n])
            slow_weight = 1.0 - scored.gate + scored.gate * self._gate.v
            parts = {"slow": slow_weight * scored.slow[n]}
            parts.update({name: scored.gate * self._gate.w[c] * scored.fast[n, c]
                          for c, name in enumerate(FAST_SIGNALS)})
            signal = max(parts, key=parts.get)
            trigger = verb = None
            if signal in TRIGGERED and len(recent):
                h = self._trigger(signal, recent, row)
                trigger = self._stats.items.id_of(h)
                verb = VERBS.get(self._last_kind(user_id, h))
            out.append(Recommendation(self._stats.items.id_of(row), float(scored.score[n]),
                                      float(scored.gate * scored.fast_score[n]),
                                      float(slow_weight * scored.slow[n]), scored.gate,
                                      reason_for(signal, trigger, verb, personal)))
        return out

    def _trigger(self, signal: str, recent: np.ndarray, row: int) -> int:
        """The recent item (a row) that contributed most of a triggered signal's score for `row`."""
        stats = self._stats
        if signal == "sequential_rules":   # sr scores from the last item alone
            return int(recent[-1])
        matrix, width = {"cooccurrence": (stats.cooccurrence, stats.window),
                         "transition": (stats.transitions, stats.transition_window),
                         "recency_knn": (stats.peers.knn, stats.peers.knn_window)}[signal]
        window = recent[-width:]
        strength = [matrix.get(int(h), row) for h in window]
        return int(window[int(np.argmax(strength))])

    def _own_entries(self, user_id: str):
        """The user's live memory entries, oldest first, found through their entry ids."""
        return self._memory.entries_by_id(list(self._mem_ids.get(self._users.get(user_id), ())))

    def _last_kind(self, user_id: str, row: int) -> str:
        entries = self._own_entries(user_id)
        mine = np.flatnonzero(entries.items == row)
        return EVENT_KINDS[int(entries.types[mine[-1]])] if len(mine) else "view"

    def fast_preferences(self, since: float = 0.0, k: int = 10,
                         users: Collection[str] | None = None) -> dict[str, list[tuple[str, float]]]:
        """What the fast path currently prefers for each user active since `since` (stream time).

        Per user: the top k items by the fast path alone (gate pinned to 1, items the user
        already had excluded) with their fast scores. Consolidation distils these into the slow
        model, so a preference the user expressed only recently survives the fast state's decay.
        """
        self.flush()
        chosen = users if users is not None else [u for u in self._fast.users()
                                                   if self._fast.get(u).updated >= since]
        out = {}
        for user_id in chosen:
            if user_id not in self._fast:
                continue
            scored = self.score(user_id, self.history(user_id))
            if not len(scored.rows):
                continue
            order = np.lexsort((scored.rows, -scored.fast_score))[:k]
            out[user_id] = [(self._stats.items.id_of(int(scored.rows[n])), float(scored.fast_score[n]))
                            for n in order]
        return out

    def history(self, user_id: str) -> list[str]:
        """The user's recent item ids held in fast state, oldest first."""
        return [self._stats.items.id_of(int(r)) for r in self._recent(user_id)]

    # ------------------------------------------------------------------ per-user state (PartitionedState)
    def users(self) -> list[str]:
        """Users with fast state."""
        return self._fast.users()

    def export_users(self, user_ids: Collection[str]) -> bytes:
        """Fast state and memory entries of these users, with item ids (not rows) so any process can import."""
        self.flush()
        out = {}
        for user_id, state in self._fast.export_users(user_ids).items():
            entries = self._own_entries(user_id)
            out[user_id] = {
                "vec": state.vec, "updated": state.updated, "events": state.events,
                "recent": [self._stats.items.id_of(int(r)) for r in state.recent],
                "memory": {"items": [self._stats.items.id_of(int(r)) for r in entries.items],
                           "times": entries.times, "types": entries.types, "values": entries.values,
                           "slots": len(self._mem_ids.get(self._users.get(user_id), ()))},
            }
        return pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)

    def import_users(self, blob: bytes) -> None:
        """Install users exported by `export_users`, replacing what this model had for them."""
        self.flush()
        states = pickle.loads(blob)
        self.forget_users(list(states))
        for user_id, st in states.items():
            # the adopted users' times are stream time this model has now seen
            self.clock = max(self.clock, st["updated"], *np.asarray(st["memory"]["times"]).tolist())
            rows = [self._register(i) for i in st["recent"]]
            self._fast.import_users({user_id: UserState(np.asarray(st["vec"], np.float32), st["updated"],
                                                        st["events"], array("q", rows))})
            mem = st["memory"]
            user_row = self._users.add(user_id)
            ids = np.zeros(0, dtype=np.int64)
            if len(mem["items"]):
                items = np.array([self._register(i) for i in mem["items"]])
                key = _unit(sum(self._user_vector(user_id))[None, :])
                ids = self._memory.add(np.repeat(key, len(items), axis=0), items, user_row,
                                       mem["times"], mem["types"], mem["values"])
            # the exporter's id list also counted entries that aged out since; keep their places
            # (as ids that match nothing) so the cap trims at the same events it would have there
            self._mem_ids[user_row] = deque([-1] * (mem["slots"] - len(ids)) + ids.tolist())

    def _register(self, item_id: str) -> int:
        """An item's row (known to the stream statistics and mapped to the slow model), uncounted."""
        row = self._stats.register(item_id)
        self._map_item(row)
        return row

    def forget_users(self, user_ids: Collection[str], deleted: bool = False) -> None:
        """Drop every trace of these users' per-user state: fast state and memory entries.

        `deleted` (the user asked to be forgotten, not a partition moving away) also stops the
        slow model's learned vector for them from being used, now and after any model swap.
        """
        self.flush()
        if deleted:
            self._forgotten.update(user_ids)
        rows = [self._users.get(u) for u in user_ids]
        for user_id in user_ids:
            self._fast.forget(user_id)
        self._memory.remove_users([r for r in rows if r >= 0])
        for r in rows:
            self._mem_ids.pop(r, None)
        for user_id in user_ids:
            self._served.pop(user_id, None)

    def __getstate__(self) -> dict:
        """Pickle the model as if every queued event had been applied."""
        self.flush()
        state = self.__dict__.copy()
        state["_context"] = None
        state["_context_items"] = None
        state["_popularity"] = None
        state["_base_memo"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        state.pop("context", None)   # pickles from before `context` was a property
        self.__dict__.update(state)
        for name in ("_context", "_context_items", "_base_memo", "_popularity"):
            self.__dict__.setdefault(name, None)
        self.__dict__.setdefault("_warming", False)


class FastSlowFrozen(FastSlow):
    """The `fast-slow-frozen` ablation: the FastSlow whose slow model is never consolidated
    (the product, `fast-slow` in replay, consolidates on a schedule: `consolidation.policy`)."""

    name = "fast-slow-frozen"


def fast_slow_frozen(seed: int = 0) -> FastSlowFrozen:
    """Factory used by `fastslow replay --policy fast-slow-frozen`."""
    return FastSlowFrozen(seed=seed)


class FastOnly(FastSlow):
    """The `fast-only` ablation: the fast path over a frozen slow model, gate pinned to 1."""

    name = "fast-only"

    def __init__(self, ranker: SlowRanker | None = None, seed: int = 0) -> None:
        super().__init__(ranker=ranker, fixed_gate=1.0, seed=seed)


def fast_only(seed: int = 0) -> FastOnly:
    """Factory for `--policy fast-only`."""
    return FastOnly(seed=seed)
