"""Simulate the interaction events of a synthetic stream from its `World`.

Sessions are laid out first (length, owner, start time, per-event times), then taste shifts
are placed between two sessions of eligible users, then every session is walked step by step,
all sessions of a chunk at once (numpy, no Python loop per event). At each step an event is

* on the same item as the previous one, one funnel step further (view, click, cart, purchase),
  with probability ``p_repeat``;
* on a planted "next" item of the previous one with probability ``p_next`` (when that item is
  already introduced);
* otherwise a taste-driven pick: a category from the user's taste (after a shift, the new
  category with probability ``shift_strength``; any category with probability ``p_explore``),
  then the best of ``taste_candidates`` popularity draws by latent affinity with the user.

Before their shift, users never interact with their future new category (such picks are
redrawn from their old taste), so the shift is a true "new favourite".

With seasons (``SynthConfig.seasons``), a taste-driven pick is in the current period's season
catalogue with probability ``season_strength``: the user's closest category of that season
(by latent affinity) 70% of the time, their second closest otherwise. Planted links are
followed only to items of the current season.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from evaluation.synth_world import (STREAM_EVENTS, STREAM_SESSIONS, STREAM_SHIFTS, ItemSampler, SynthConfig, World,
                                    season_categories, season_labels, season_period)

logger = logging.getLogger(__name__)
VIEW, CLICK, CART, PURCHASE = 0, 1, 2, 3
EVENT_TYPES = ("view", "click", "cart", "purchase")
_NEW_ITEM_TYPE_CUM = np.array([0.72, 0.94, 0.99, 1.0])  # event type of an event on a new item
NO_SHIFT = np.iinfo(np.int64).max
CHUNK_SESSIONS = 1 << 17  # sessions simulated together; fixed, so output never depends on memory

Progress = Callable[[str, int, int], None]


@dataclass
class Events:
    """Events in session layout (session after session), times in seconds after the start."""

    user: np.ndarray      # (n_events,) int32
    item: np.ndarray      # (n_events,) int32
    time: np.ndarray      # (n_events,) int64
    kind: np.ndarray      # (n_events,) int8 index into EVENT_TYPES
    value: np.ndarray     # (n_events,) float32 (1 for view/click, a quantity for cart/purchase)
    session: np.ndarray   # (n_events,) int32 session number


@dataclass
class Shifts:
    """Users with an abrupt taste shift (sorted by user) and their shift times and categories."""

    user: np.ndarray          # (n_shifted,) int32
    time: np.ndarray          # (n_shifted,) int64 seconds after start; events at or after are post-shift
    new_category: np.ndarray  # (n_shifted,) int32
    vector: np.ndarray        # (n_shifted, dim) float32 taste vector after the shift


def _sessions(cfg: SynthConfig, world: World):
    """Session lengths (summing to n_events), owners, and per-event seconds after start."""
    rng = np.random.default_rng([cfg.seed, STREAM_SESSIONS])
    p = 1.0 / cfg.session_mean
    lengths = np.empty(0, dtype=np.int64)
    while lengths.sum() < cfg.n_events:
        more = np.minimum(rng.geometric(p, size=int(cfg.n_events * p * 1.2) + 16), cfg.session_max)
        lengths = np.concatenate([lengths, more])
    cut = int(np.searchsorted(np.cumsum(lengths), cfg.n_events))
    lengths = lengths[: cut + 1]
    lengths[-1] -= lengths.sum() - cfg.n_events
    n = len(lengths)
    first = rng.permutation(cfg.n_users)[:n]  # everyone gets a session when there are enough
    rest = rng.choice(cfg.n_users, size=n - len(first), p=world.user_activity)
    owner = np.concatenate([first, rest]).astype(np.int32)
    span = int(cfg.span_days * 86_400)
    day = rng.integers(0, max(1, span // 86_400), n)
    hour = rng.choice(24, size=n, p=_DIURNAL)
    start = np.minimum(day * 86_400 + hour * 3_600 + rng.integers(0, 3_600, n), span - 1)
    gaps = np.maximum(1, np.rint(rng.lognormal(np.log(30.0), 1.0, cfg.n_events))).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    gaps[offsets] = 0
    elapsed = np.cumsum(gaps)
    session = np.repeat(np.arange(n, dtype=np.int32), lengths)
    times = start[session] + elapsed - elapsed[offsets][session]
    return lengths, offsets, owner, session, times


_HOURLY = np.array([2, 1, 1, 1, 1, 2, 3, 5, 6, 6, 6, 6, 7, 6, 6, 6, 6, 7, 8, 9, 9, 8, 6, 4], float)
_DIURNAL = _HOURLY / _HOURLY.sum()


def _shifts(cfg: SynthConfig, world: World, lengths, offsets, owner, times) -> Shifts:
    """Place shifts between two sessions of users with enough events on both sides."""
    rng = np.random.default_rng([cfg.seed, STREAM_SHIFTS])
    order = np.lexsort((offsets, times[offsets], owner))  # sessions by user, then start time
    u, n_ev = owner[order], lengths[order]
    starts, ends = times[offsets[order]], times[offsets[order] + n_ev - 1]
    new_user = np.concatenate([[True], u[1:] != u[:-1]])
    before = np.cumsum(n_ev) - n_ev
    before -= np.maximum.accumulate(np.where(new_user, before, 0))
    total = np.bincount(u, weights=n_ev, minlength=cfg.n_users).astype(np.int64)
    ok = ~new_user & (before >= cfg.min_pre_shift_events) & (total[u] - before >= cfg.min_post_shift_events)
    ok[1:] &= ends[:-1] < starts[1:]  # the previous session ends before this one starts
    eligible = np.unique(u[ok])
    wanted = round(cfg.shift_fraction * cfg.n_users)
    if len(eligible) < wanted:
        logger.warning("only %d users have >= %d events before and >= %d after some session boundary; "
                       "shifting all of them instead of %d (use more events or smaller minimums)",
                       len(eligible), cfg.min_pre_shift_events, cfg.min_post_shift_events, wanted)
    chosen = np.sort(rng.choice(eligible, size=min(wanted, len(eligible)), replace=False))
    if not len(chosen):  # shift_fraction=0 (or nobody eligible): a stream without shifts
        return Shifts(np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64),
                      np.zeros((0, cfg.dim), np.float32))
    # one eligible boundary per chosen user, uniformly: the eligible session with the largest key
    cand = np.nonzero(ok & np.isin(u, chosen))[0]
    cand = cand[np.lexsort((rng.random(len(cand)), u[cand]))]
    last = np.concatenate([u[cand][1:] != u[cand][:-1], [True]])
    boundary = cand[last]
    prev_end = ends[boundary - 1]
    time = starts[boundary] - rng.integers(0, np.maximum(1, starts[boundary] - prev_end), len(boundary))
    new_category = _new_categories(cfg, world, chosen, rng)
    vector = world.centroids[new_category] + 0.3 / np.sqrt(cfg.dim) * rng.standard_normal(
        (len(chosen), cfg.dim))
    vector = (vector / np.linalg.norm(vector, axis=1, keepdims=True)).astype(np.float32)
    return Shifts(chosen.astype(np.int32), time.astype(np.int64), new_category, vector)


def _new_categories(cfg: SynthConfig, world: World, users: np.ndarray, rng) -> np.ndarray:
    """A category neither liked nor next to a liked one (else just not liked), uniformly."""
    fav = world.user_favourites[users]
    allowed = np.ones((len(users), cfg.n_categories), dtype=bool)
    rows = np.arange(len(users))[:, None]
    allowed[rows, world.neighbours[fav].reshape(len(users), -1)] = False
    allowed[rows, fav] = False
    empty = ~allowed.any(axis=1)
    allowed[empty] = True
    allowed[rows[empty], fav[empty]] = False
    keys = np.where(allowed, rng.random(allowed.shape), -1.0)
    return np.argmax(keys, axis=1).astype(np.int32)


class _Walker:
    """Per-step vectorised choices for the sessions of one chunk."""

    def __init__(self, cfg: SynthConfig, world: World, shifts: Shifts, sampler: ItemSampler) -> None:
        self.cfg, self.world, self.sampler = cfg, world, sampler
        self.shift_time = np.full(cfg.n_users, NO_SHIFT, dtype=np.int64)
        self.shift_time[shifts.user] = shifts.time
        self.new_category = np.full(cfg.n_users, -1, dtype=np.int32)
        self.new_category[shifts.user] = shifts.new_category
        self.post_vector = world.user_vector.copy()
        self.post_vector[shifts.user] = shifts.vector
        self.season_of_period = self.season_favourites = self.item_season = None
        if cfg.seasons:
            labels = season_labels(cfg)
            self.season_of_period = np.array([labels.index(c) for c in cfg.seasons])
            owned = season_categories(cfg)
            self.item_season = world.item_category % len(labels)   # as `season_categories` assigns them
            affinity = world.user_vector @ world.centroids.T            # (users, categories)
            self.season_favourites = np.stack([                          # (users, seasons, 2)
                np.asarray(owned[label])[np.argsort(-affinity[:, owned[label]], axis=1, kind="stable")[:, :2]]
                for label in labels], axis=1).astype(np.int32)

    def season(self, time: np.ndarray) -> np.ndarray:
        """Season number (index into the distinct letters) of each event time."""
        return self.season_of_period[season_period(self.cfg, time)]

    def taste_pick(self, user, time, post, rng, explore: bool) -> np.ndarray:
        cfg, w = self.cfg, self.world
        m = len(user)
        slot = (rng.random(m)[:, None] > w.user_fav_cum[user]).sum(axis=1)
        slot = np.minimum(slot, cfg.favourites - 1)
        category = w.user_favourites[user, slot]
        to_new = post & (rng.random(m) < cfg.shift_strength)
        category[to_new] = self.new_category[user[to_new]]
        if explore:
            wander = rng.random(m) < cfg.p_explore
            category[wander] = rng.choice(cfg.n_categories, size=int(wander.sum()), p=w.category_weight)
        if self.season_favourites is not None:
            hot = rng.random(m) < cfg.season_strength
            second = (rng.random(m) >= 0.7).astype(np.int64)
            category[hot] = self.season_favourites[user[hot], self.season(time[hot]), second[hot]]
        c = cfg.taste_candidates
        draws = self.sampler.sample(np.repeat(category, c), np.repeat(time, c), rng).reshape(m, c)
        taste = np.where(to_new[:, None], self.post_vector[user], w.user_vector[user])
        score = np.einsum("md,mcd->mc", taste, w.item_vector[draws])
        return draws[np.arange(m), np.argmax(score, axis=1)]

    def step(self, user, time, prev, rng) -> tuple[np.ndarray, np.ndarray]:
        """Items for one step of many sessions, and which of them repeat the previous item."""
        cfg, w = self.cfg, self.world
        m = len(user)
        post = time >= self.shift_time[user]
        item = np.full(m, -1, dtype=np.int32)
        repeat = np.zeros(m, dtype=bool)
        if prev is not None:
            r = rng.random(m)
            repeat = r < cfg.p_repeat
            follow = (r >= cfg.p_repeat) & (r < cfg.p_repeat + cfg.p_next)
            slot = (rng.random(m)[:, None] > w.link_cum).sum(axis=1)
            target = w.links[prev, np.minimum(slot, cfg.n_next - 1)]
            follow &= w.item_introduced[target] <= time
            if self.item_season is not None:
                follow &= self.item_season[target] == self.season(time)
            item[repeat] = prev[repeat]
            item[follow] = target[follow]
        need = item < 0
        item[need] = self.taste_pick(user[need], time[need], post[need], rng, explore=True)
        bad = ~post & (w.item_category[item] == self.new_category[user])
        item[bad] = self.taste_pick(user[bad], time[bad], post[bad], rng, explore=False)
        return item, repeat & ~bad


def _event_kinds(rng, repeat: np.ndarray, prev_kind) -> np.ndarray:
    kind = np.searchsorted(_NEW_ITEM_TYPE_CUM, rng.random(len(repeat)), side="right").astype(np.int8)
    if prev_kind is not None:
        kind[repeat] = np.minimum(prev_kind[repeat] + 1, PURCHASE)
    return np.minimum(kind, PURCHASE)


def _walk_chunk(walker: _Walker, chunk: int, lengths, offsets, owner, times, ev: Events) -> None:
    cfg = walker.cfg
    rng = np.random.default_rng([cfg.seed, STREAM_EVENTS, chunk])
    order = np.argsort(-lengths, kind="stable")  # longest first: active sessions are a prefix
    lengths, offsets, owner = lengths[order], offsets[order], owner[order]
    prev = prev_kind = None
    for k in range(int(lengths.max())):
        m = int(np.searchsorted(-lengths, -k, side="left"))  # sessions with length > k
        idx = offsets[:m] + k
        item, repeat = walker.step(owner[:m], times[idx], None if prev is None else prev[:m], rng)
        kind = _event_kinds(rng, repeat, None if prev_kind is None else prev_kind[:m])
        ev.item[idx], ev.kind[idx] = item, kind
        prev, prev_kind = item, kind


def simulate(cfg: SynthConfig, world: World, progress: Progress | None = None) -> tuple[Events, Shifts]:
    """All events of the stream (session layout) and the planted shifts.

    Examples
    --------
    >>> from evaluation.synth_world import build_world
    >>> cfg = SynthConfig.preset("tiny")
    >>> events, shifts = simulate(cfg, build_world(cfg))
    >>> len(events.item), len(shifts.user) > 0
    (3000, True)
    """
    lengths, offsets, owner, session, times = _sessions(cfg, world)
    shifts = _shifts(cfg, world, lengths, offsets, owner, times)
    walker = _Walker(cfg, world, shifts, ItemSampler(world.item_category, world.item_introduced,
                                                     world.item_popularity, cfg.n_categories))
    ev = Events(user=owner[session], item=np.empty(cfg.n_events, np.int32), time=times,
                kind=np.empty(cfg.n_events, np.int8), value=np.ones(cfg.n_events, np.float32),
                session=session)
    n_chunks = -(-len(lengths) // CHUNK_SESSIONS)
    for chunk in range(n_chunks):
        part = slice(chunk * CHUNK_SESSIONS, (chunk + 1) * CHUNK_SESSIONS)
        _walk_chunk(walker, chunk, lengths[part], offsets[part], owner[part], times, ev)
        if progress is not None:
            progress("simulate", int(offsets[part][-1] + lengths[part][-1]), cfg.n_events)
    rng = np.random.default_rng([cfg.seed, STREAM_EVENTS, n_chunks])
    basket = ev.kind >= CART  # cart and purchase carry a quantity
    ev.value[basket] = np.minimum(rng.geometric(0.6, size=int(basket.sum())), 12)
    return ev, shifts
