"""`fastslow bench memory`: episodic memory and item index latency and recall.

Synthetic embedding-like data (d=64): item vectors around cluster centres with log-normal
norms; memory keys are item vectors drawn with a power-law popularity (as events would be);
queries are means of a few item vectors (as user vectors would be). Times are per call, one
query at a time, after `set_faiss_threads(threads)`; CPU time (this thread) is reported next
to wall time because a shared machine makes wall time wait for a core. Recall is measured
against exact numpy inner products and counts ties (a hit scoring at least the exact k-th
score counts), since popular items repeat as keys. The last stdout line is one JSON object.
Also runnable as ``python -m models.bench_memory``.
"""

from __future__ import annotations

import json
import time

import typer


def bench_memory(
    memory_sizes: str = typer.Option("10000,50000,100000", help="Memory fills to measure."),
    capacity: int = typer.Option(100_000, help="Memory capacity (sets nlist = sqrt(capacity))."),
    nprobes: str = typer.Option("4,8,16", help="nprobe values to measure."),
    item_sizes: str = typer.Option("10000,100000,1000000", help="Catalogue sizes for the item index."),
    ef_searches: str = typer.Option("64,128,256", help="HNSW efSearch values to measure."),
    item_nprobes: str = typer.Option("16,32,64", help="Item-index IVF nprobe values to measure."),
    queries: int = typer.Option(1000, help="Timed queries per configuration."),
    threads: int = typer.Option(1, help="FAISS OpenMP threads while timing searches."),
    build_threads: int = typer.Option(2, help="FAISS OpenMP threads while building HNSW."),
    json_only: bool = typer.Option(False, "--json", help="Print only the JSON result."),
) -> None:
    """Time episodic-memory search and item-index build/search; measure recall."""
    result = {"threads": threads,
              "memory": _bench_memory([int(s) for s in memory_sizes.split(",")], capacity,
                                      [int(s) for s in nprobes.split(",")], queries, threads),
              "item_index": _bench_items(
                  [int(s) for s in item_sizes.split(",")],
                  [("hnsw", "ef_search", [int(s) for s in ef_searches.split(",")]),
                   ("ivf", "nprobe", [int(s) for s in item_nprobes.split(",")])],
                  queries, threads, build_threads)}
    if not json_only:
        typer.echo(json.dumps(result, indent=1))
    typer.echo(json.dumps(result))


def _catalogue(rng, n: int, dim: int = 64):
    import numpy as np

    centres = rng.standard_normal((max(50, n // 400), dim)).astype(np.float32)
    x = centres[rng.integers(len(centres), size=n)] + 0.7 * rng.standard_normal((n, dim), dtype=np.float32)
    x *= rng.lognormal(0.0, 0.3, size=(n, 1)).astype(np.float32)
    return x / np.float32(np.sqrt(dim))


def _users(rng, items, n: int):
    return items[rng.integers(len(items), size=(n, 5))].mean(axis=1)


def _timed(call, n: int) -> dict[str, float]:
    """p50/p99 wall and CPU microseconds of call(i) for i < n (the first 50 warm up)."""
    import numpy as np

    wall, cpu = [], []
    for i in range(n + 50):
        began, began_cpu = time.perf_counter(), time.thread_time()
        call(i)
        cpu.append(time.thread_time() - began_cpu)
        wall.append(time.perf_counter() - began)
    wall, cpu = np.array(wall[50:]) * 1e6, np.array(cpu[50:]) * 1e6
    return {"p50_us": round(float(np.percentile(wall, 50)), 1), "p99_us": round(float(np.percentile(wall, 99)), 1),
            "cpu_p50_us": round(float(np.percentile(cpu, 50)), 1), "cpu_p99_us": round(float(np.percentile(cpu, 99)), 1)}


def _recall(found_scores: list, exact_kth, k: int) -> float:
    import numpy as np

    return round(float(np.mean([(s >= t - 1e-4).sum() / k for s, t in zip(found_scores, exact_kth)])), 4)


def _bench_memory(sizes: list[int], capacity: int, nprobes: list[int], queries: int, threads: int) -> list[dict]:
    import numpy as np

    from models.memory import EpisodicMemory, set_faiss_threads

    rng = np.random.default_rng(0)
    items = _catalogue(rng, 20_000)
    popularity = 1.0 / np.arange(1, len(items) + 1) ** 0.8
    k, out = 50, []
    for size in sizes:
        picked = rng.choice(len(items), size=size, p=popularity / popularity.sum())
        keys = items[picked]
        q = _users(rng, items, queries)
        exact_kth = -np.partition(-(q @ keys.T), k - 1, axis=1)[:, k - 1]
        mem = EpisodicMemory(64, capacity=capacity, max_age=None)
        set_faiss_threads(threads)
        began = time.perf_counter()
        for lo in range(0, size, 1000):  # batches of 1,000 events
            n = min(1000, size - lo)
            mem.add(keys[lo:lo + n], picked[lo:lo + n], rng.integers(5000, size=n), np.arange(n) + lo, 1, 1.0)
        row = {"entries": size, "add_us_per_entry_batched": round((time.perf_counter() - began) / size * 1e6, 2)}
        row["exact"] = _timed(lambda i: mem.search(q[i % queries], k), queries)
        began = time.perf_counter()
        mem.train(items)
        row["train_s"] = round(time.perf_counter() - began, 3)
        row["nlist"] = mem.index.nlist
        for nprobe in nprobes:
            mem.nprobe = nprobe
            hits = mem.search(q, k)
            row[f"nprobe{nprobe}"] = {"recall@50": _recall([h.scores for h in hits], exact_kth, k),
                                      "lists_scanned": mem.index.nprobe,
                                      **_timed(lambda i: mem.search(q[i % queries], k), queries)}
        extra = _catalogue(rng, 2000)
        row["add_one"] = _timed(lambda i: mem.add(extra[i % 2000][None], i, i, float(size + i), 1), 1000)
        one = int(mem.search(q[0], 1).users[0])
        began = time.perf_counter()
        row["remove_user_entries"] = mem.remove_users([one])
        row["remove_user_ms"] = round((time.perf_counter() - began) * 1e3, 3)
        out.append(row)
    return out


def _bench_items(sizes: list[int], approx: list[tuple[str, str, list[int]]], queries: int,
                 threads: int, build_threads: int) -> list[dict]:
    """Exact and approximate ItemIndex per catalogue size; recall for mixed and focused users."""
    import faiss
    import numpy as np

    from models.item_index import ItemIndex
    from models.memory import set_faiss_threads

    rng = np.random.default_rng(1)
    k, out = 100, []
    for size in sizes:
        items = _catalogue(rng, size)
        users = {"mixed": _users(rng, items, queries),  # mean of 5 random items
                 "focused": items[rng.integers(size, size=queries)]
                 + rng.standard_normal((queries, items.shape[1]), dtype=np.float32) * 0.005}
        set_faiss_threads(build_threads)
        kth = {name: faiss.knn(q, items, k, metric=faiss.METRIC_INNER_PRODUCT)[0][:, -1]
               for name, q in users.items()}
        q = users["mixed"]
        row: dict = {"items": size}
        set_faiss_threads(threads)
        exact = ItemIndex(exact_max=size).build(items)
        n_exact = min(queries, 200 if size > 200_000 else queries)
        row["exact"] = _timed(lambda i: exact.search(q[i % n_exact], k), n_exact)
        for kind, param, values in approx:
            set_faiss_threads(build_threads)
            began = time.perf_counter()
            index = ItemIndex(exact_max=0, kind=kind).build(items)
            row[f"{kind}_build_s"] = round(time.perf_counter() - began, 2)
            set_faiss_threads(threads)
            for value in values:
                setattr(index, param, value)
                recall = {f"recall@100_{name}": _recall([index.search(x, k)[1] for x in uq], kth[name], k)
                          for name, uq in users.items()}
                row[f"{kind}_{param}{value}"] = {**recall, **_timed(lambda i: index.search(q[i % queries], k), queries)}
        out.append(row)
    return out


if __name__ == "__main__":
    typer.run(bench_memory)
