"""Candidate retrieval: nearest items to a user vector by inner product.

Built from the slow model's item vectors and rebuilt whole when a new slow model is
promoted. Catalogues up to `exact_max` items use an exact ``IndexFlatIP``; larger ones an
approximate index, by default ``IndexIVFFlat`` (inner product, spherical k-means lists).

Why IVF rather than HNSW by default: measured here (`models.bench_memory`, d=64, clustered
vectors with log-normal norms, one query at a time, one FAISS thread, k=100), HNSW with the
inner-product metric (M=32) reached lower recall at higher cost at every size, and its
build is neither fast nor reproducible with several threads:

=========  ==========================  ===============================================
items      exact (CPU p50 / p99)       approximate (recall@100, CPU p50 / p99, build)
=========  ==========================  ===============================================
10k        92 / 175 µs                 IVF nprobe 32: 0.999, 55 / 147 µs, 0.7 s
                                       HNSW ef 128: 0.90, 78 / 165 µs, 2.5 s
100k       0.97 / 1.25 ms              IVF nprobe 32: 0.98, 154 / 276 µs, 3.7 s
                                       HNSW ef 256: 0.87, 389 / 560 µs, 16 s
1M         13 / 19 ms                  IVF nprobe 32: 0.68, 510 / 680 µs, 22 s
                                       HNSW ef 256: 0.75, 787 / 1240 µs, 314 s
=========  ==========================  ===============================================

(recall for "mixed" users, the mean of 5 random items; users close to one item get
0.90-1.0 from IVF.) At 1M items, ``nlist=4000`` gives IVF 0.77 at ~345 µs with nprobe 64
but takes ~5 min to build. Exclusions (items the user already has) are applied by fetching
``k + len(exclude_rows)`` and dropping them, so they never cost a result slot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import faiss
import numpy as np

from fastslow.errors import ConfigError
from models.memory import IndexInputError, as_vectors

logger = logging.getLogger(__name__)

_PARAMS = ("exact_max", "kind", "hnsw_m", "ef_search", "ef_construction", "nlist", "nprobe")
_KINDS = ("hnsw", "ivf")
_MIN_POINTS_PER_LIST = 39  # below this faiss k-means warns that it has too few points


class ItemIndex:
    """Top-k items by inner product with a query: exact when small, approximate when large.

    Parameters
    ----------
    exact_max
        Catalogues up to this many items get an exact flat index (~10 µs per 1,000 items
        per query); larger ones `kind`.
    kind
        The approximate index: "hnsw" (``IndexHNSWFlat``, inner product) or "ivf"
        (``IndexIVFFlat``, inner product, ``sqrt(n)`` lists; deterministic to build).
    hnsw_m
        HNSW links per node (memory and build time against recall).
    ef_search
        HNSW candidate list length at query time (never below k).
    ef_construction
        HNSW candidate list length while building.
    nlist
        IVF lists (default ``round(sqrt(n))``; ~4·sqrt(n) answers faster at 1M items but
        takes ~15x longer to build).
    nprobe
        IVF lists scanned per query.

    Examples
    --------
    >>> index = ItemIndex().build([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]], rows=[10, 11, 12])
    >>> rows, scores = index.search([1.0, 0.5], k=2)
    >>> rows.tolist(), [round(s, 2) for s in scores.tolist()]
    ([12, 10], [1.05, 1.0])
    >>> index.search([1.0, 0.5], k=2, exclude_rows={12})[0].tolist()
    [10, 11]
    >>> len(index), index.is_exact
    (3, True)
    """

    def __init__(self, exact_max: int = 10_000, kind: str = "ivf", hnsw_m: int = 32,
                 ef_search: int = 128, ef_construction: int = 64, nlist: int | None = None,
                 nprobe: int = 32) -> None:
        self.exact_max = exact_max
        self.kind = kind
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self.ef_construction = ef_construction
        self.nlist = nlist
        self.nprobe = nprobe
        if nlist is not None and nlist < 1:
            raise ConfigError("nlist", nlist, "a positive number of lists, or None for sqrt(n)")
        if exact_max < 0:
            raise ConfigError("exact_max", exact_max, "a number of items >= 0 (0: always approximate)")
        if kind not in _KINDS:
            raise ConfigError("kind", kind, f"one of {', '.join(_KINDS)}")
        for name in ("hnsw_m", "ef_search", "ef_construction", "nprobe"):
            if getattr(self, name) < 1:
                raise ConfigError(name, getattr(self, name), "a positive int")
        self._index: faiss.Index | None = None
        self._rows = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def dim(self) -> int | None:
        """Vector size of the built index (None before `build`)."""
        return None if self._index is None else self._index.d

    @property
    def is_exact(self) -> bool:
        """True when searches are exact (flat index); False for HNSW."""
        return self._index is None or isinstance(self._index, faiss.IndexFlat)

    def build(self, vectors, rows=None) -> "ItemIndex":
        """Index `vectors` (n, d), labelled by `rows` (default 0..n-1); replaces any old index."""
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] == 0:
            raise IndexInputError("item vectors", "shape (n, d) with d >= 1", f"shape {x.shape}")
        x = as_vectors(x, x.shape[1], "item vectors")
        labels = np.arange(len(x), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        if labels.shape != (len(x),):
            raise IndexInputError("rows", f"{len(x)} item rows, one per vector", f"shape {labels.shape}")
        began = time.perf_counter()
        index = self._new_index(x)
        index.add(x)
        self._index, self._rows = index, labels
        logger.info("item index: %s over %d items built in %.2f s", type(index).__name__,
                    len(x), time.perf_counter() - began)
        return self

    def add(self, vectors, rows) -> "ItemIndex":
        """Append `vectors` (n, d) labelled by `rows` to the built index (an approximate index
        keeps the lists or graph it was built with). A row added again is found under its
        newest and older vectors alike; `build` again to drop the old ones.

        >>> index = ItemIndex().build([[1.0, 0.0]], rows=[5]).add([[0.0, 1.0]], rows=[9])
        >>> index.search([0.2, 1.0], k=2)[0].tolist(), len(index)
        ([9, 5], 2)
        """
        if self._index is None:
            return self.build(vectors, rows)
        x = as_vectors(np.asarray(vectors, dtype=np.float32), self._index.d, "item vectors")
        labels = np.asarray(rows, dtype=np.int64)
        if labels.shape != (len(x),):
            raise IndexInputError("rows", f"{len(x)} item rows, one per vector", f"shape {labels.shape}")
        self._index.add(x)
        self._rows = np.concatenate([self._rows, labels])
        return self

    def _new_index(self, x: np.ndarray) -> faiss.Index:
        """An empty (trained) index of the kind that suits a catalogue of len(x) items."""
        n, d = x.shape
        if n <= self.exact_max:
            return faiss.IndexFlatIP(d)
        if self.kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(d, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = self.ef_construction
            hnsw.hnsw.efSearch = self.ef_search
            return hnsw
        nlist = max(1, min(self.nlist or round(np.sqrt(n)), n // _MIN_POINTS_PER_LIST))
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(x)
        ivf.nprobe = self.nprobe
        return ivf

    def search(self, query, k: int, exclude_rows: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The `k` best rows for `query` (d,) and their inner products, best first.

        Rows in `exclude_rows` never appear; fewer than `k` come back when the catalogue
        (less the excluded rows) is smaller.
        """
        if k < 1:
            raise IndexInputError("k", "a positive number of items", repr(k))
        if self._index is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        q = as_vectors(np.asarray(query, dtype=np.float32).reshape(1, -1), self._index.d, "query")
        self._sync_params()
        excluded = np.fromiter(exclude_rows, dtype=np.int64) if exclude_rows else None
        fetch = min(len(self._rows), int(k) + (len(excluded) if excluded is not None else 0))
        if fetch == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        scores, positions = self._index.search(q, fetch)
        scores, positions = scores[0], positions[0]
        if positions[-1] < 0:   # faiss pads missing results with -1 at the end
            found = positions >= 0
            positions, scores = positions[found], scores[found]
        rows = self._rows[positions]
        if excluded is not None:
            keep = ~np.isin(rows, excluded)
            rows, scores = rows[keep], scores[keep]
        return rows[:k], scores[:k]

    def _sync_params(self) -> None:
        """Apply `ef_search` / `nprobe` if they were changed after `build`."""
        index = self._index
        if isinstance(index, faiss.IndexHNSW) and index.hnsw.efSearch != self.ef_search:
            index.hnsw.efSearch = self.ef_search
        elif isinstance(index, faiss.IndexIVF) and index.nprobe != self.nprobe:
            index.nprobe = self.nprobe

    def __getstate__(self) -> dict:
        state = {name: getattr(self, name) for name in _PARAMS}
        state["rows"] = self._rows
        state["index"] = None if self._index is None else faiss.serialize_index(self._index)
        return state

    def __setstate__(self, state: dict) -> None:
        for name in _PARAMS:
            setattr(self, name, state[name])
        self._rows = state["rows"]
        self._index = None if state["index"] is None else faiss.deserialize_index(state["index"])
