"""Scenario: the worker is killed (SIGKILL) again and again at chosen points of its batch loop.

`worker_crash` produces a stream, then runs ``fastslow worker`` armed with one fault after
another (`infra.faults`: ``apply``, ``commit`` or ``snapshot`` at a random hit), restarting
it after each crash, and finally once without a fault until every event is committed. The
worker's last snapshot must hold exactly the state an uninterrupted in-process replay of the
same events gives: every event once (`infra.faults.AppliedLog` records each application,
so losses and double applications are counted event by event), or for the product model
(`models.fastslow.FastSlow` over a registered champion) every user's fast state equal to the
replay's (vectors within float tolerance, everything else exactly).
"""

from __future__ import annotations

import logging
import pickle
import random
from pathlib import Path

import numpy as np
import pyarrow as pa

from infra.fault_streams import (WorkerProcess, committed_total, event_keys, keyed_events, make_topic, produce_acked,
                                 unique, wait_for)
from infra.faults import POINTS, ScenarioResult, tally

logger = logging.getLogger(__name__)

APPLIED_LOG = "infra.faults:AppliedLog"
POLL = 500
"""Records per poll: ``apply`` is reached once per partition of each poll."""
WORKER_OPTIONS = ("--max-poll-records", str(POLL), "--flush-interval", "0.2", "--snapshot-interval", "1.0",
                  "--snapshot-events", "2000")


def fault_plan(kills: int, seed: int, events: int, points: tuple[str, ...] = tuple(POINTS)) -> list[str]:
    """``kills`` fault specs cycling through ``points``, each at a random hit (seeded).

    Hits are drawn small enough that each crash comes within about ``1 / (kills + 1)`` of the
    stream: every run makes some progress, and the last faults still find events to crash on.

    >>> fault_plan(4, seed=0, events=40_000)
    ['apply:13', 'commit:4', 'snapshot:1', 'apply:9']
    """
    rng = random.Random(seed)
    reach = max(1, events // (POLL * (kills + 1)))
    most = {"apply": reach, "commit": max(1, reach // 4), "snapshot": max(1, reach // 4)}
    return [f"{name}:{rng.randint(1, most[name])}" for name in (points[k % len(points)] for k in range(kills))]


def worker_crash(bootstrap: str, data_dir: Path, *, events: int = 20_000, users: int = 300, kills: int = 3,
                 seed: int = 0, champion=None, points: tuple[str, ...] = tuple(POINTS),
                 timeout: float = 120.0) -> ScenarioResult:
    """Crash the worker ``kills`` times over an ``events`` stream; compare its final state with a replay.

    ``champion`` (a `models.slow.SlowRanker` registered as champion in ``data_dir``'s registry)
    runs the product model instead of `AppliedLog`.
    """
    data_dir = Path(data_dir)
    topic, _ = make_topic(bootstrap)
    group = unique("crash")
    table = keyed_events(events, users=users, seed=seed)
    produce_acked(bootstrap, topic, table)
    model = APPLIED_LOG if champion is None else None
    runs = []
    for spec in fault_plan(kills, seed, events, points):
        runs.append(_run_until_fault(bootstrap, topic, group, data_dir, model, spec, events, timeout))
    final = WorkerProcess.start(bootstrap, topic, group, data_dir, model=model, options=WORKER_OPTIONS)
    try:
        final.wait_joined(timeout)
        wait_for(lambda: committed_total(bootstrap, group, topic) >= events or not final.alive(), timeout,
                 "the restarted worker to commit every event")
    finally:
        code = final.stop()
    if code != 0:
        return ScenarioResult("worker_crash", False, details={"error": f"final worker exited {code}: {final.tail()}"})
    got = final_model(data_dir, topic, group)
    details = {"faults": runs, "kills": sum(r["killed"] for r in runs), "model": type(got).__name__,
               "topic": topic, "group": group}
    if champion is None:
        counted = tally(event_keys(table), got.keys())
        same = counted.lost == counted.duplicated == 0 and counted.applied == events
    else:
        counted, same, why = compare_fastslow(got, table, champion)
        details["state_matches_replay"] = same
        if why:
            details["mismatch"] = why
    passed = same and details["kills"] == kills
    return ScenarioResult("worker_crash", passed, **counted.as_dict(), details=details)


def _run_until_fault(bootstrap, topic, group, data_dir, model, spec, events, timeout) -> dict:
    worker = WorkerProcess.start(bootstrap, topic, group, data_dir, model=model, fault=spec, options=WORKER_OPTIONS)
    try:
        worker.wait_joined(timeout)
        wait_for(lambda: not worker.alive() or committed_total(bootstrap, group, topic) >= events, timeout,
                 f"the worker armed with {spec} to crash")
    finally:
        code = worker.process.poll()
        if code is None:  # the stream ended before the fault point was reached that often
            code = worker.stop()
    committed = committed_total(bootstrap, group, topic)
    logger.info("fault %s: worker exited %s with %d events committed", spec, code, committed)
    return {"fault": spec, "killed": code == -9, "exit": code, "committed_at_exit": committed}


def final_model(data_dir: Path, topic: str, group: str):
    """The model in worker ``w1``'s last snapshot."""
    from streaming.snapshots import SnapshotStore, snapshot_dir

    return SnapshotStore(snapshot_dir(data_dir, topic, group)).read_worker("w1").model


def compare_fastslow(got, table: pa.Table, champion):
    """(per-user tally, same?, first difference) of a worker's FastSlow against a replay of ``table``.

    Per user: the events counted must be equal (a shortfall counts as lost events, a surplus
    as duplicated ones); recent items, update time and live memory entries exactly equal; the
    fast vector within float tolerance (sums in other batch shapes). Item counts over all
    users must be equal too.
    """
    from infra.faults import Tally
    from models.fastslow import FastSlow

    want = FastSlow(ranker=champion.clone())
    stamps = table.column("timestamp").cast(pa.int64()).to_pylist()
    for u, i, t, e, v in zip(table.column("user_id").to_pylist(), table.column("item_id").to_pylist(), stamps,
                             table.column("event_type").to_pylist(), table.column("value").to_pylist()):
        want.learn_one(u, i, t / 1000, e, v)
    mine, theirs = _per_user(got), _per_user(want)
    lost = sum(max(0, w["events"] - mine.get(u, {"events": 0})["events"]) for u, w in theirs.items())
    twice = sum(max(0, g["events"] - theirs.get(u, {"events": 0})["events"]) for u, g in mine.items())
    counted = Tally(table.num_rows, got.events - twice, lost, twice)
    why = _first_difference(mine, theirs, want.clock - want.memory_max_age)
    if not why and _item_counts(got) != _item_counts(want):
        why = "item counts differ"
    return counted, not why and lost == twice == 0, why


def _per_user(model) -> dict[str, dict]:
    return pickle.loads(model.export_users(sorted(model.users())))


def _first_difference(got: dict, want: dict, memory_since: float) -> str:
    if sorted(got) != sorted(want):
        return f"users differ: {sorted(set(got) ^ set(want))[:5]}"
    for user, w in want.items():
        g = got[user]
        for key in ("recent", "events", "updated"):
            if g[key] != w[key]:
                return f"user {user}: {key} {g[key]!r} != {w[key]!r}"
        if not np.allclose(g["vec"], w["vec"], rtol=1e-4, atol=1e-6):
            return f"user {user}: fast vector differs"
        if _memory(g, memory_since) != _memory(w, memory_since):
            return f"user {user}: memory entries differ"
    return ""


def _memory(state: dict, since: float) -> list[tuple]:
    """Live memory entries (older ones are evicted lazily, at moments that depend on batching)."""
    mem = state["memory"]
    entries = zip(mem["items"], np.asarray(mem["times"]).tolist(), np.asarray(mem["types"]).tolist())
    return sorted(e for e in entries if e[1] >= since)


def _item_counts(model) -> dict[str, float]:
    stats = model._stats
    return {i: c for i, c in zip(stats.items.ids(), stats.counts[: stats.n_items].tolist()) if c}
