"""The hidden world behind a synthetic stream: categories, items, users and their tastes.

`build_world` draws everything the event simulation (`evaluation.synth_events`) needs and
that the ground truth reports: category centroids in a latent space, items with a category,
a latent vector near its centroid, a Zipf popularity weight, a price and an introduction time,
a sparse "next item" structure (each item leads to a few similar items), and users with a
heavy-tailed activity level and a taste made of a few neighbouring favourite categories.

`ItemSampler` draws items of a category in proportion to popularity among the items already
introduced at a given time, for many (category, time) pairs at once.

Every quantity is drawn from its own random stream (``numpy.random.default_rng([seed, k])``),
so e.g. changing the number of events leaves the catalogue and the users unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from fastslow.errors import ConfigError

logger = logging.getLogger(__name__)

# Random stream numbers, one per independent part of the generator.
STREAM_CATEGORIES, STREAM_ITEMS, STREAM_LINKS, STREAM_USERS = 1, 2, 3, 4
STREAM_SESSIONS, STREAM_SHIFTS, STREAM_EVENTS = 5, 6, 7


@dataclass(frozen=True)
class SynthConfig:
    """Every parameter of the synthetic stream; the defaults give a 200k-event stream.

    Examples
    --------
    >>> cfg = SynthConfig.preset("tiny", seed=3)
    >>> (cfg.n_events, cfg.n_users, cfg.seed)
    (3000, 100, 3)
    >>> SynthConfig(n_events=0)
    Traceback (most recent call last):
    ...
    fastslow.errors.ConfigError: setting n_events=0 is invalid: expected an integer >= 1
    """

    n_events: int = 200_000
    """Number of events in the stream."""
    n_users: int = 5_000
    """Number of users; each gets at least one session when there are enough events."""
    n_items: int = 20_000
    """Final catalogue size (initial items plus items introduced during the stream)."""
    n_categories: int = 50
    """Number of item categories (tastes)."""
    dim: int = 16
    """Dimension of the latent space of users, items and category centroids."""
    zipf: float = 0.8
    """Item popularity weight is rank ** -zipf over a random ranking of the catalogue."""
    session_mean: float = 6.0
    """Mean session length in events (geometric, at least 1)."""
    session_max: int = 50
    """Longest session, in events."""
    activity_sigma: float = 1.2
    """Users' activity levels are lognormal with this sigma (heavy-tailed events per user)."""
    favourites: int = 3
    """Favourite categories per user: one drawn by category popularity, the rest near it."""
    shift_fraction: float = 0.1
    """Fraction of all users given an abrupt taste shift (fewer if too few users qualify)."""
    shift_strength: float = 0.8
    """After a shift, this share of the user's taste-driven picks is in the new category."""
    min_pre_shift_events: int = 10
    """A shifted user has at least this many events before the shift."""
    min_post_shift_events: int = 20
    """A shifted user has at least this many events at or after the shift."""
    new_item_fraction: float = 0.2
    """Fraction of the catalogue introduced during the stream (not available at the start)."""
    n_next: int = 3
    """Planted "next" items per item (the sparse item-to-item transition structure)."""
    p_next: float = 0.4
    """Within a session, probability that an event follows a planted link of the previous item."""
    p_repeat: float = 0.12
    """Within a session, probability that an event is on the previous item (next funnel step)."""
    p_cross: float = 0.1
    """Probability that a planted link points into a neighbouring category."""
    p_explore: float = 0.05
    """Probability that a taste-driven pick comes from a random category instead."""
    taste_candidates: int = 4
    """A taste-driven pick takes the best of this many popularity draws by latent affinity."""
    start: str = "2024-01-01T00:00:00Z"
    """Stream start time (ISO-8601, UTC)."""
    span_days: float = 60.0
    """Sessions start within this many days after `start`."""
    seasons: str = ""
    """Season schedule, one letter per equal-length period of the span (e.g. ``"ABACA"``): each
    letter owns a disjoint set of categories (its hot catalogue, see `season_categories`) and
    users' taste-driven picks follow the current period's letter. Empty: no seasons."""
    season_strength: float = 0.95
    """With seasons, this share of taste-driven picks is in the season's catalogue (the rest
    follows the user's year-round taste)."""
    seed: int = 0
    """Seed: the same configuration and seed give a byte-identical stream."""

    def __post_init__(self) -> None:
        positive = ("n_events", "n_users", "n_items", "n_categories", "dim", "session_max",
                    "favourites", "n_next", "taste_candidates")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(name, value, "an integer >= 1")
        for name in ("shift_fraction", "shift_strength", "new_item_fraction", "p_next",
                     "p_repeat", "p_cross", "p_explore", "season_strength"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(name, value, "a probability in [0, 1]")
        self._check_relations()

    def _check_relations(self) -> None:
        if self.p_next + self.p_repeat > 1.0:
            raise ConfigError("p_next", self.p_next, f"p_next + p_repeat <= 1 (p_repeat={self.p_repeat})")
        if self.favourites >= self.n_categories:
            raise ConfigError("favourites", self.favourites,
                              f"fewer favourite categories than categories ({self.n_categories})")
        n_initial = self.n_items - round(self.n_items * self.new_item_fraction)
        if n_initial < self.n_categories:
            raise ConfigError("n_items", self.n_items,
                              f"at least one initial item per category ({self.n_categories} "
                              f"categories, new_item_fraction={self.new_item_fraction})")
        if self.zipf < 0 or self.session_mean < 1 or self.span_days <= 0 or self.activity_sigma < 0:
            raise ConfigError("zipf/session_mean/span_days/activity_sigma",
                              (self.zipf, self.session_mean, self.span_days, self.activity_sigma),
                              "zipf >= 0, session_mean >= 1, span_days > 0, activity_sigma >= 0")
        if self.min_pre_shift_events < 1 or self.min_post_shift_events < 1:
            raise ConfigError("min_pre_shift_events/min_post_shift_events",
                              (self.min_pre_shift_events, self.min_post_shift_events), "integers >= 1")
        start_seconds(self.start)
        self._check_seasons()

    def _check_seasons(self) -> None:
        if not self.seasons:
            return
        if not (self.seasons.isascii() and self.seasons.isalpha() and self.seasons.isupper()):
            raise ConfigError("seasons", self.seasons, "capital letters, one per period, e.g. ABACA")
        if 2 * len(set(self.seasons)) > self.n_categories:
            raise ConfigError("seasons", self.seasons, f"at most n_categories / 2 = {self.n_categories // 2} "
                              "different letters (each season needs two categories)")
        if self.shift_fraction > 0:
            raise ConfigError("shift_fraction", self.shift_fraction,
                              "0 with seasons (a season already moves every user's taste)")

    @classmethod
    def preset(cls, name: str, **overrides) -> "SynthConfig":
        """A named configuration (see `PRESETS`) with some fields overridden."""
        if name not in PRESETS:
            raise ConfigError("preset", name, f"one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        """The parameters as plain JSON-ready values."""
        return dataclasses.asdict(self)


def start_seconds(start: str) -> int:
    """Unix seconds of an ISO-8601 time string (UTC when it names no offset).

    >>> start_seconds("2024-01-01T00:00:00Z")
    1704067200
    """
    try:
        moment = datetime.fromisoformat(start)
    except (TypeError, ValueError) as err:
        raise ConfigError("start", start, "an ISO-8601 time such as 2024-01-01T00:00:00Z") from err
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


_SMALL = dict(min_pre_shift_events=5, min_post_shift_events=10)
PRESETS: dict[str, SynthConfig] = {
    # Doctests and unit tests: a few hundred milliseconds.
    "tiny": SynthConfig(n_events=3_000, n_users=100, n_items=300, n_categories=8, dim=8,
                        shift_fraction=0.2, span_days=14.0, **_SMALL),
    # Integration tests: about a second.
    "small": SynthConfig(n_events=30_000, n_users=600, n_items=2_000, n_categories=20,
                         span_days=30.0, **_SMALL),
    "default": SynthConfig(),
    # Forgetting benchmark: hot catalogues that come and go and come back (A, B, A, C, A).
    "seasons": SynthConfig(n_events=40_000, n_users=1_500, n_items=3_000, n_categories=24,
                           shift_fraction=0.0, new_item_fraction=0.0, span_days=50.0,
                           seasons="ABACA", **_SMALL),
    # Scale benchmarks.
    "large": SynthConfig(n_events=10_000_000, n_users=200_000, n_items=100_000,
                         n_categories=200, span_days=180.0),
}


def season_labels(cfg: SynthConfig) -> list[str]:
    """The distinct season letters in order of first appearance.

    >>> season_labels(SynthConfig.preset("seasons"))
    ['A', 'B', 'C']
    """
    return list(dict.fromkeys(cfg.seasons))


def season_categories(cfg: SynthConfig) -> dict[str, list[int]]:
    """Each season letter's categories: the k-th letter (`season_labels`) owns those with ``c % n_letters == k``.

    >>> season_categories(SynthConfig.preset("seasons", n_categories=7))
    {'A': [0, 3, 6], 'B': [1, 4], 'C': [2, 5]}
    """
    labels = season_labels(cfg)
    return {label: list(range(k, cfg.n_categories, len(labels))) for k, label in enumerate(labels)}


def season_period(cfg: SynthConfig, seconds: np.ndarray) -> np.ndarray:
    """Period number (index into ``cfg.seasons``) of times in seconds after the start.

    >>> season_period(SynthConfig.preset("seasons", span_days=5.0), np.array([0, 86_399, 86_400, 10**9]))
    array([0, 0, 1, 4])
    """
    n = max(1, len(cfg.seasons))
    return np.clip(np.asarray(seconds, dtype=np.int64) * n // int(cfg.span_days * 86_400), 0, n - 1)


def season_bounds(cfg: SynthConfig) -> np.ndarray:
    """Start of each period and the end of the last, seconds after the start (``len(seasons) + 1``)."""
    span = int(cfg.span_days * 86_400)
    n = len(cfg.seasons)
    return -(-np.arange(n + 1, dtype=np.int64) * span // n)


@dataclass
class World:
    """Everything drawn before the first event; arrays are indexed by internal ids."""

    centroids: np.ndarray        # (n_categories, dim) float32, unit norm
    category_weight: np.ndarray  # (n_categories,) float64, sums to 1
    neighbours: np.ndarray       # (n_categories, favourites) int32, nearest other categories
    item_category: np.ndarray    # (n_items,) int32
    item_vector: np.ndarray      # (n_items, dim) float32
    item_popularity: np.ndarray  # (n_items,) float64 Zipf weights
    item_introduced: np.ndarray  # (n_items,) int64 seconds after start (0 = initial catalogue)
    item_price: np.ndarray       # (n_items,) float64
    item_code: np.ndarray        # (n_items,) int64 public id number (a permutation)
    links: np.ndarray            # (n_items, n_next) int32 planted next items
    link_cum: np.ndarray         # (n_next,) cumulative probability of following each link slot
    user_activity: np.ndarray    # (n_users,) float64, sums to 1
    user_favourites: np.ndarray  # (n_users, favourites) int32 categories
    user_fav_cum: np.ndarray     # (n_users, favourites) cumulative taste weights
    user_vector: np.ndarray      # (n_users, dim) float32 taste before any shift


def _rng(cfg: SynthConfig, stream: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, stream])


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _categories(cfg: SynthConfig):
    rng = _rng(cfg, STREAM_CATEGORIES)
    centroids = _unit(rng.standard_normal((cfg.n_categories, cfg.dim)))
    weight = rng.lognormal(0.0, 0.6, cfg.n_categories)
    sim = centroids @ centroids.T
    np.fill_diagonal(sim, -np.inf)
    neighbours = np.argsort(-sim, axis=1, kind="stable")[:, : cfg.favourites].astype(np.int32)
    return centroids, weight / weight.sum(), neighbours


def _items(cfg: SynthConfig, centroids: np.ndarray, category_weight: np.ndarray):
    rng = _rng(cfg, STREAM_ITEMS)
    n, n_new = cfg.n_items, round(cfg.n_items * cfg.new_item_fraction)
    category = rng.choice(cfg.n_categories, size=n, p=category_weight).astype(np.int32)
    category[: cfg.n_categories] = np.arange(cfg.n_categories)  # every category has an initial item
    span = int(cfg.span_days * 86_400)
    introduced = np.zeros(n, dtype=np.int64)
    introduced[n - n_new:] = np.sort(rng.integers(1, max(2, int(span * 0.9)), size=n_new))
    vector = _unit(centroids[category] + 0.6 / np.sqrt(cfg.dim) * rng.standard_normal((n, cfg.dim)))
    popularity = (rng.permutation(n) + 1.0) ** -cfg.zipf
    base_price = np.exp(rng.normal(3.0, 0.8, cfg.n_categories))
    price = np.maximum(0.5, np.round(base_price[category] * rng.lognormal(0.0, 0.4, n), 2))
    code = rng.permutation(n).astype(np.int64)
    return category, vector, popularity, introduced, price, code


def _links(cfg: SynthConfig, sampler: "ItemSampler", category: np.ndarray,
           vector: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Each item's planted next items: per slot, the most similar of 8 popular draws."""
    rng = _rng(cfg, STREAM_LINKS)
    n, pool = cfg.n_items, 8
    links = np.empty((n, cfg.n_next), dtype=np.int32)
    horizon = np.iinfo(np.int64).max // (4 * cfg.n_categories)
    for slot in range(cfg.n_next):
        target = category.copy()
        cross = rng.random(n) < cfg.p_cross
        target[cross] = neighbours[category[cross], rng.integers(0, neighbours.shape[1], cross.sum())]
        draws = sampler.sample(np.repeat(target, pool), np.full(n * pool, horizon), rng).reshape(n, pool)
        score = np.einsum("nd,npd->np", vector, vector[draws])
        score[draws == np.arange(n)[:, None]] = -np.inf  # no self-links
        links[:, slot] = draws[np.arange(n), np.argmax(score, axis=1)]
    return links


def _users(cfg: SynthConfig, centroids: np.ndarray, category_weight: np.ndarray,
           neighbours: np.ndarray):
    rng = _rng(cfg, STREAM_USERS)
    n = cfg.n_users
    activity = rng.lognormal(0.0, cfg.activity_sigma, n)
    primary = rng.choice(cfg.n_categories, size=n, p=category_weight)
    favourites = np.empty((n, cfg.favourites), dtype=np.int32)
    favourites[:, 0] = primary
    if cfg.favourites > 1:
        favourites[:, 1:] = neighbours[primary, : cfg.favourites - 1]
    weights = np.sort(rng.dirichlet(np.ones(cfg.favourites), size=n), axis=1)[:, ::-1]
    weights = 0.5 * weights + 0.5 * np.eye(cfg.favourites)[0]  # the primary category dominates
    fav_cum = np.cumsum(weights, axis=1)
    fav_cum[:, -1] = 1.0
    vector = np.einsum("uf,ufd->ud", weights, centroids[favourites])
    vector = _unit(vector + 0.3 / np.sqrt(cfg.dim) * rng.standard_normal((n, cfg.dim)))
    return activity / activity.sum(), favourites, fav_cum, vector


def build_world(cfg: SynthConfig) -> World:
    """Draw categories, items, planted links and users for `cfg`.

    Examples
    --------
    >>> w = build_world(SynthConfig.preset("tiny"))
    >>> w.item_category.shape, w.links.shape, w.user_favourites.shape
    ((300,), (300, 3), (100, 3))
    >>> bool((w.item_introduced[:8] == 0).all())  # every category has an initial item
    True
    """
    centroids, category_weight, neighbours = _categories(cfg)
    category, vector, popularity, introduced, price, code = _items(cfg, centroids, category_weight)
    sampler = ItemSampler(category, introduced, popularity, cfg.n_categories)
    links = _links(cfg, sampler, category, vector, neighbours)
    slot_weight = 0.6 ** np.arange(cfg.n_next)
    link_cum = np.cumsum(slot_weight / slot_weight.sum())
    link_cum[-1] = 1.0
    activity, favourites, fav_cum, user_vector = _users(cfg, centroids, category_weight, neighbours)
    return World(centroids, category_weight, neighbours, category, vector, popularity, introduced,
                 price, code, links, link_cum, activity, favourites, fav_cum, user_vector)


class ItemSampler:
    """Draw items of given categories by popularity among those introduced by a given time.

    Items are ordered by (category, introduction time), so the items of category ``c``
    available at time ``t`` form a contiguous run; one cumulative popularity array then
    answers any number of (category, time) draws with two binary searches each.

    Examples
    --------
    >>> s = ItemSampler(np.array([0, 0, 1]), np.array([0, 50, 0]), np.ones(3), 2)
    >>> rng = np.random.default_rng(0)
    >>> sorted(set(s.sample(np.zeros(100, int), np.full(100, 10), rng).tolist()))  # item 1 not yet out
    [0]
    >>> sorted(set(s.sample(np.zeros(100, int), np.full(100, 60), rng).tolist()))
    [0, 1]
    """

    def __init__(self, category: np.ndarray, introduced: np.ndarray, popularity: np.ndarray,
                 n_categories: int) -> None:
        self._width = int(introduced.max()) + 2**40
        key = category.astype(np.int64) * self._width + introduced.astype(np.int64)
        self._order = np.argsort(key, kind="stable")
        self._key = key[self._order]
        self._cum = np.concatenate([[0.0], np.cumsum(popularity[self._order])])
        self._first = np.searchsorted(self._key, np.arange(n_categories, dtype=np.int64) * self._width)

    def sample(self, category: np.ndarray, time: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One item per (category, time) pair; each category must have an item out by then."""
        category = category.astype(np.int64)
        lo = self._first[category]
        query = category * self._width + np.minimum(time.astype(np.int64), self._width - 1)
        hi = np.searchsorted(self._key, query, side="right")
        cum_lo, cum_hi = self._cum[lo], self._cum[hi]
        position = np.searchsorted(self._cum, cum_lo + rng.random(len(lo)) * (cum_hi - cum_lo),
                                   side="right") - 1
        return self._order[np.clip(position, lo, hi - 1)].astype(np.int32)
