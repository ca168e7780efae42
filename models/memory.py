"""Episodic memory: recent events as vectors, searchable the moment they are added.

Every event becomes one entry: a key vector (in the slow model's item space) and a payload
(item row, user row, time, event type code, value). Entries get int64 ids in arrival order;
the payload of id ``i`` lives at slot ``i - base`` of plain numpy arrays, so a search result
maps to its payload with one subtraction.

Why these FAISS choices (faiss 1.15):

* The index is an ``IndexIVFFlat`` (inner product) holding **our ids natively**
  (``add_with_ids``) with a hash-table direct map, so ``remove_ids`` with an
  ``IDSelectorArray`` costs O(removed), not a pass over the index (~50 µs for 100 ids at
  100k entries against ~7 ms for a scan). ``IndexIDMap2`` is deliberately *not* wrapped
  around the IVF: in faiss 1.15.1 ``IndexIDMap2(IndexIVFFlat)`` returns wrong ids after the
  first ``remove_ids`` and aborts the process on the second (faiss issues #1643, #4656); the
  IVF's own id storage is the id map that supports removal.
* Until `train` is called the index has one list, so search is exact (a flat scan: ~0.1 ms
  at 10k entries, ~1.1 ms at 100k). `train` with the slow model's item vectors (the keys
  live in that space) builds ``nlist`` lists and moves the entries over; search then scans
  ``nprobe`` lists (more while the memory is far from full). Measured (one thread, d=64,
  capacity 100k, k=50, `models.bench_memory`): ~65 µs per query at 50k entries with
  recall@50 0.93 against exact, ~75 µs at 100k with 0.81 (nprobe 16: 0.93, ~105 µs).
* Eviction is explicit and batched: by capacity (oldest first, down to
  ``capacity * (1 - evict_fraction)``) and by age (older than ``max_age`` before the newest
  time seen). The index is never reset; payload slots of removed ids are marked dead and the
  dead prefix is dropped when the arrays are reallocated.

Single queries are faster with one OpenMP thread on a busy machine (see `set_faiss_threads`).
Not thread-safe: one thread adds, evicts and searches (or callers hold a lock).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import faiss
import numpy as np

from fastslow.errors import ConfigError, FastslowError

logger = logging.getLogger(__name__)

_PAYLOAD = {"items": np.int64, "users": np.int64, "times": np.float64, "types": np.int8,
            "values": np.float32}
#: Column arrays indexed by slot (id - base): the payload, and whether the id is in the index.
#: Separate columns, not one structured array: gathering 50 hits is 3x faster.
_SLOT = {**_PAYLOAD, "alive": np.bool_}
_PARAMS = ("dim", "capacity", "max_age", "nlist", "nprobe", "evict_fraction")
_MIN_POINTS_PER_LIST = 39  # below this faiss k-means warns that it has too few points


def set_faiss_threads(n: int = 1) -> int:
    """Set FAISS's OpenMP thread count process-wide; return the previous count.

    Entry points that search one query at a time should call ``set_faiss_threads(1)``: on
    a 2-core machine shared with other work, a one-query flat search over 100k vectors took
    ~1 ms with 1 thread and ~20 ms with 2 (threads wait for each other); IVF searches were
    the same at the median and worse at p99 with 2. Library code never calls it.

    >>> previous = set_faiss_threads(1)
    >>> set_faiss_threads(previous)
    1
    """
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(n))
    return previous


class IndexInputError(FastslowError):
    """An array handed to the episodic memory or the item index has the wrong shape or values.

    >>> str(IndexInputError("keys", "shape (n, 64)", "(3, 32)"))
    'keys: expected shape (n, 64), got (3, 32)'
    """

    def __init__(self, what: str, expected: str, got: str) -> None:
        self.what, self.expected, self.got = what, expected, got
        super().__init__(f"{what}: expected {expected}, got {got}")


def as_vectors(x, dim: int, what: str) -> np.ndarray:
    """`x` as a C-contiguous float32 (n, dim) array of finite values, or IndexInputError."""
    a = np.ascontiguousarray(x, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] != dim:
        raise IndexInputError(what, f"shape (n, {dim})", str(a.shape))
    if not np.isfinite(a).all():
        raise IndexInputError(what, "finite values", "NaN or infinity")
    return a


@dataclass(slots=True, eq=False)
class Entries:
    """Memory entries as parallel arrays (one element per entry); equal when all arrays are."""

    ids: np.ndarray
    items: np.ndarray
    users: np.ndarray
    times: np.ndarray
    types: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(np.array_equal(getattr(self, f), getattr(other, f)) for f in self.__dataclass_fields__)

    __hash__ = None  # type: ignore[assignment]


@dataclass(slots=True, eq=False)
class Hits(Entries):
    """Search results, best first: entries plus their inner-product ``scores``."""

    scores: np.ndarray


class EpisodicMemory:
    """A bounded FAISS memory of recent events with payloads kept in step with ids.

    Parameters
    ----------
    dim
        Size of the key vectors.
    capacity
        Most live entries; past it the oldest (by arrival) are evicted in a batch.
    max_age
        Seconds; entries older than this before the newest time seen are evicted. Between
        batches an entry may outlive it by up to ``evict_fraction * max_age``; call
        ``evict(now)`` for an exact cut. None keeps entries until capacity evicts them.
    nlist
        Inverted lists built by `train` (default ``round(sqrt(capacity))``), capped at
        (training vectors / 39).
    nprobe
        Lists a full trained memory scans per query (recall against speed). A memory holding
        fewer entries scans more lists, ``nprobe * capacity / len`` (at most all), so a query
        costs about the same at any fill and recall does not drop while the memory fills.
    evict_fraction
        Share of `capacity` freed per capacity eviction batch.

    Examples
    --------
    >>> mem = EpisodicMemory(dim=2, capacity=3, evict_fraction=0.3)
    >>> keys = [[1, 0], [0, 1], [1, 1]]
    >>> mem.add(keys, items=[10, 11, 12], users=[0, 0, 1], times=[1.0, 2.0, 3.0],
    ...         event_types=[1, 1, 3], values=1.0).tolist()
    [0, 1, 2]
    >>> hits = mem.search([1.0, 0.2], k=2)
    >>> hits.items.tolist(), [round(s, 2) for s in hits.scores.tolist()], hits.users.tolist()
    ([12, 10], [1.2, 1.0], [1, 0])
    >>> mem.add([[0, 2]], items=13, users=2, times=4.0, event_types=1).tolist()  # over capacity
    [3]
    >>> sorted(mem.search([0.0, 1.0], k=5).ids.tolist()), len(mem)
    ([2, 3], 2)
    >>> mem.remove_users([2]), mem.entries_of(2).ids.tolist(), len(mem)
    (1, [], 1)
    """

    def __init__(self, dim: int, capacity: int = 100_000, max_age: float | None = 7 * 86400.0,
                 nlist: int | None = None, nprobe: int = 8, evict_fraction: float = 0.05) -> None:
        self.dim = dim
        self.capacity = capacity
        self.max_age = max_age
        self.nlist = nlist
        self.nprobe = nprobe
        self.evict_fraction = evict_fraction
        _check_params(self)
        self._use(_single_list_index(dim))
        self._trained = False
        self._slots: dict[str, np.ndarray] = {name: np.zeros(0, dtype) for name, dtype in _SLOT.items()}
        self._base = 0      # id stored in slot 0
        self._head = 0      # first slot that may be alive; all before it are dead
        self._next_id = 0
        self._n_live = 0
        self._newest = -math.inf

    def __len__(self) -> int:
        return self._n_live

    @property
    def index(self) -> faiss.IndexIVFFlat:
        """The FAISS index (for inspection: ``ntotal`` always equals ``len(self)``)."""
        return self._index

    @property
    def is_trained(self) -> bool:
        """True once `train` built the inverted lists (before that, search is exact)."""
        return self._trained

    def add(self, keys, items, users, times, event_types, values=1.0) -> np.ndarray:
        """Add entries (scalars broadcast over the rows of `keys`); return their new ids.

        May evict in a batch afterwards (capacity, age), so the count can drop below
        ``len(before) + n``.
        """
        keys = as_vectors(keys, self.dim, "keys")
        n = len(keys)
        raw = dict(items=items, users=users, times=times, types=event_types, values=values)
        cols = {name: _column(raw[name], n, dtype, name) for name, dtype in _PAYLOAD.items()}
        if not np.isfinite(cols["times"]).all():
            raise IndexInputError("times", "finite unix seconds", "NaN or infinity")
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        if n == 0:
            return ids
        self._reserve(n)
        self._index.add_with_ids(keys, ids)
        slots = slice(self._next_id - self._base, self._next_id - self._base + n)
        for name, col in cols.items():
            self._slots[name][slots] = col
        self._slots["alive"][slots] = True
        self._next_id += n
        self._n_live += n
        self._newest = max(self._newest, float(cols["times"].max()))
        self._evict_batch()
        return ids

    def search(self, query, k: int) -> Hits | list[Hits]:
        """The `k` live entries with the largest inner product with `query`, best first.

        `query` (d,) gives one `Hits`; (q, d) gives a list of q. Fewer than `k` come back
        when the memory holds fewer (or, trained, when the probed lists do).
        """
        q = np.ascontiguousarray(query, dtype=np.float32)
        single = q.ndim == 1
        q = as_vectors(q.reshape(1, -1) if single else q, self.dim, "query")
        if k < 1:
            raise IndexInputError("k", "a positive number of hits", repr(k))
        k = min(int(k), self._n_live)
        if k == 0:
            empty = self._hits(np.zeros(0, np.float32), np.zeros(0, np.int64))
            return empty if single else [empty] * len(q)
        probes = min(self._nlist, max(self.nprobe, -(-self.nprobe * self.capacity // self._n_live)))
        if probes != self._nprobe_set:  # more lists while the memory is not full
            self._index.nprobe = self._nprobe_set = probes
        scores, ids = self._index.search(q, k)
        if single:
            return self._hits(scores[0], ids[0])
        return [self._hits(s, i) for s, i in zip(scores, ids)]

    def entries(self) -> Entries:
        """Every live entry, oldest first."""
        return self._entries(self._live_slots())

    def entries_of(self, user_row: int) -> Entries:
        """Every live entry of one user, oldest first."""
        return self._entries(self._live_slots(self._slots["users"] == user_row))

    def entries_by_id(self, ids) -> Entries:
        """The live entries among `ids`, in the order given (no scan of the whole memory)."""
        slots = np.asarray(ids, dtype=np.int64) - self._base
        slots = slots[(slots >= self._head) & (slots < self._next_id - self._base)]
        return self._entries(slots[self._slots["alive"][slots]])

    def remove(self, ids) -> int:
        """Remove these entries (ids no longer live are ignored); return how many were removed."""
        slots = np.asarray(ids, dtype=np.int64) - self._base
        slots = slots[(slots >= self._head) & (slots < self._next_id - self._base)]
        return self._remove(np.unique(slots[self._slots["alive"][slots]]))

    def remove_users(self, user_rows: Iterable[int]) -> int:
        """Remove every entry of these users (index and payload); return how many."""
        rows = np.fromiter(user_rows, dtype=np.int64)
        return self._remove(self._live_slots(np.isin(self._slots["users"], rows)))

    def evict(self, now: float | None = None) -> int:
        """Remove entries older than ``now - max_age`` and any over capacity; return count.

        `now` defaults to the newest time added. Afterwards ``len(self) <= capacity``.
        """
        removed = 0
        if self.max_age is not None and self._n_live:
            now = self._newest if now is None else float(now)
            removed += self._remove(self._live_slots(self._slots["times"] < now - self.max_age))
        if self._n_live > self.capacity:
            removed += self._remove(self._live_slots()[: self._n_live - self.capacity])
        return removed

    def train(self, vectors=None) -> None:
        """Build the inverted lists from `vectors`, by default the live keys themselves.

        Pass the slow model's item vectors before the memory fills; once it holds many
        entries, training on its own keys fits the lists to them (measured: recall@50 0.70
        -> 0.76 for unit user-vector keys). Live entries move into the new index with their
        ids and keys; payloads are untouched.
        """
        ids = self._live_slots() + self._base
        keys = self._index.reconstruct_batch(ids) if len(ids) else np.zeros((0, self.dim), np.float32)
        self._rebuild(self._trained_index(keys if vectors is None else vectors), keys, ids)
        self._trained = True

    def rekey(self, fn: Callable[[Entries], np.ndarray], train_vectors=None) -> None:
        """Replace every live entry's key by ``fn(entries)`` (an (n, dim) array).

        For a new slow model: keys from the old model's space are stale. Ids and payloads
        stay. With `train_vectors` the inverted lists are rebuilt from them first (do this
        when the space changed); otherwise the current lists are kept.
        """
        entries = self._entries(self._live_slots())
        keys = as_vectors(fn(entries), self.dim, "rekey keys")
        if len(keys) != len(entries):
            raise IndexInputError("rekey keys", f"{len(entries)} rows, one per live entry",
                                  f"{len(keys)} rows")
        if train_vectors is not None:
            index = self._trained_index(train_vectors)
        else:
            index = faiss.clone_index(self._index)
            index.reset()
        self._rebuild(index, keys, entries.ids)
        self._trained = self._trained or train_vectors is not None

    def __getstate__(self) -> dict:
        live = slice(self._head, self._next_id - self._base)
        state = {name: getattr(self, name) for name in _PARAMS}
        state.update(index=faiss.serialize_index(self._index), trained=self._trained,
                     base=self._base + self._head, next_id=self._next_id,
                     n_live=self._n_live, newest=self._newest,
                     slots={name: col[live].copy() for name, col in self._slots.items()})
        return state

    def __setstate__(self, state: dict) -> None:
        for name in _PARAMS:
            setattr(self, name, state[name])
        self._use(faiss.deserialize_index(state["index"]))
        self._trained = state["trained"]
        self._slots = state["slots"]
        self._base, self._head = state["base"], 0
        self._next_id, self._n_live, self._newest = state["next_id"], state["n_live"], state["newest"]

    # -- internals -------------------------------------------------------------------------

    def _live_slots(self, where: np.ndarray | None = None) -> np.ndarray:
        """Slots (ascending = oldest first) of live entries, optionally also where `where`."""
        end = self._next_id - self._base
        mask = self._slots["alive"][self._head:end]
        if where is not None:
            mask = mask & where[self._head:end]
        return np.flatnonzero(mask) + self._head

    def _use(self, index: faiss.Index) -> None:
        """Make `index` the memory's index (its list count and nprobe cached for search)."""
        self._index, self._nlist, self._nprobe_set = index, index.nlist, index.nprobe

    def _entries(self, slots: np.ndarray) -> Entries:
        cols = self._slots
        return Entries(slots + self._base, **{name: cols[name][slots] for name in _PAYLOAD})

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> Hits:
        if len(ids) and ids[-1] < 0:  # faiss pads missing results with -1 at the end
            found = int(np.count_nonzero(ids >= 0))
            ids, scores = ids[:found], scores[:found]
        slots, cols = ids - self._base, self._slots
        return Hits(ids, **{name: cols[name][slots] for name in _PAYLOAD}, scores=scores)

    def _remove(self, slots: np.ndarray) -> int:
        """Remove these live slots from the index and the payload; return how many."""
        if len(slots) == 0:
            return 0
        ids = np.ascontiguousarray(slots + self._base, dtype=np.int64)
        removed = self._index.remove_ids(faiss.IDSelectorArray(ids))
        self._slots["alive"][slots] = False
        self._n_live -= len(slots)
        if removed != len(slots) or self._index.ntotal != self._n_live:
            raise FastslowError(f"episodic memory out of step: asked FAISS to remove {len(slots)} "
                                f"ids, it removed {removed} (this is a bug; please report it)")
        alive = self._slots["alive"][self._head:self._next_id - self._base]
        if len(alive) and not alive[0]:   # advance to the first live slot (argmax stops there)
            first = int(np.argmax(alive))
            self._head += first if alive[first] else len(alive)
        return len(slots)

    def _evict_batch(self) -> None:
        """After `add`: evict by age when overdue by the slack, and by capacity with headroom."""
        removed = 0
        if self.max_age is not None and self._n_live:
            cutoff = self._newest - self.max_age
            if self._slots["times"][self._head] < cutoff - self.evict_fraction * self.max_age:
                removed += self._remove(self._live_slots(self._slots["times"] < cutoff))
        if self._n_live > self.capacity:
            keep = self.capacity - math.ceil(self.evict_fraction * self.capacity)
            removed += self._remove(self._live_slots()[: self._n_live - max(keep, 0)])
        if removed:
            logger.debug("evicted %d entries; %d live", removed, self._n_live)

    def _reserve(self, n: int) -> None:
        """Make room for `n` more slots, dropping the dead prefix when reallocating."""
        end = self._next_id - self._base
        if end + n <= len(self._slots["alive"]):
            return
        size = max(1024, 2 * (end - self._head + n))
        for name, col in self._slots.items():
            self._slots[name] = np.zeros(size, dtype=col.dtype)
            self._slots[name][: end - self._head] = col[self._head:end]
        self._base += self._head
        self._head = 0

    def _trained_index(self, vectors) -> faiss.IndexIVFFlat:
        x = as_vectors(vectors, self.dim, "training vectors")
        if len(x) == 0:
            raise IndexInputError("training vectors", "at least one vector", "none")
        wanted = self.nlist or max(1, round(math.sqrt(self.capacity)))
        nlist = max(1, min(wanted, len(x) // _MIN_POINTS_PER_LIST))
        if nlist < wanted:
            logger.info("memory: %d lists instead of %d (only %d training vectors)", nlist, wanted, len(x))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.nprobe = self.nprobe
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        return index

    def _rebuild(self, index: faiss.Index, keys: np.ndarray, ids: np.ndarray) -> None:
        """Fill `index` with (keys, ids) and make it the memory's index (payloads unchanged)."""
        if len(ids):
            index.add_with_ids(keys, np.ascontiguousarray(ids, dtype=np.int64))
        if index.ntotal != self._n_live:
            raise FastslowError(f"episodic memory rebuild holds {index.ntotal} entries, expected "
                                f"{self._n_live} (this is a bug; please report it)")
        self._use(index)


def _single_list_index(dim: int) -> faiss.IndexIVFFlat:
    """An IVF with one list around a zero centroid: exact search, no training needed."""
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(np.zeros((1, dim), dtype=np.float32))
    index = faiss.IndexIVFFlat(quantizer, dim, 1, faiss.METRIC_INNER_PRODUCT)
    index.set_direct_map_type(faiss.DirectMap.Hashtable)
    return index


def _column(x, n: int, dtype, name: str) -> np.ndarray:
    """`x` as a 0-d array (broadcast when stored) or an (n,) array of `dtype`."""
    a = np.asarray(x, dtype=dtype)
    if a.ndim != 0 and a.shape != (n,):
        raise IndexInputError(name, f"a scalar or {n} values, one per key", f"shape {a.shape}")
    return a


def _check_params(m: EpisodicMemory) -> None:
    if m.dim < 1:
        raise ConfigError("dim", m.dim, "a positive int")
    if m.capacity < 1:
        raise ConfigError("capacity", m.capacity, "a positive number of entries")
    if m.max_age is not None and not m.max_age > 0:
        raise ConfigError("max_age", m.max_age, "positive seconds, or None for no age limit")
    if m.nlist is not None and m.nlist < 1:
        raise ConfigError("nlist", m.nlist, "a positive number of lists, or None")
    if m.nprobe < 1:
        raise ConfigError("nprobe", m.nprobe, "a positive number of lists to scan")
    if not 0 < m.evict_fraction < 1:
        raise ConfigError("evict_fraction", m.evict_fraction, "a share between 0 and 1")
