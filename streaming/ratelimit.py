"""Per-user rate limiting in the worker: one user flooding events cannot take over the model.

A user (a bot, a replayed session, an attacker) who sends events far faster than people do
would fill the fast state with their items, push their items up the stream statistics every
other user is scored with, and crowd the archive that the next consolidation samples from.
`RateLimit` gives every user a token bucket: ``burst`` events at once, refilled at
``rate_per_s`` events per second. An event that finds its user's bucket empty is *rate
limited*.

What happens to a limited event
    The worker sends it to the dead-letter topic with its original bytes and headers, field
    ``user_id`` and a reason starting with ``rate limited`` (`rate_limited_error`), and counts
    it (``WorkerStats.rate_limited``, also in ``dlq``). It is neither learned nor archived.
    Archiving it without learning it was the other choice; it would let the flood reach the
    slow model at the next consolidation, which is what this guard is for. Nothing is
    silently lost: the dead letter keeps the message byte for byte, so a burst found to be
    genuine can be produced again (later, or after raising the limit).

Which clock
    Event time, not wall time. The decision must be the same whenever the events are read
    again (after a crash the worker re-reads everything after its snapshot and must end in
    the state of an uninterrupted run), and a log replayed at full speed (``fastslow
    produce --rate 0``) must not look like a flood. Time is each partition's *watermark*,
    the latest event time seen on it: a bucket refills by the watermark's advance, so an
    event stamped in the past never refills anything. Timestamps are the one thing a sender
    controls: one who stamps a flood ever further ahead gains at most
    ``max_future_skew * rate_per_s`` events (the worker refuses events more than a day ahead).

State
    A partition's buckets (`UserBuckets`) live with its other per-partition state in the
    worker's snapshots (`streaming.holdings`), so they survive a restart and move with the
    partition. A bucket that has refilled completely behaves exactly like no bucket at all,
    and the watermark never goes back, so full buckets are dropped as the map grows: memory
    follows the users active within ``burst / rate_per_s`` seconds, not all users ever seen.

Defaults (`DEFAULT_BURST` 500, `DEFAULT_RATE_PER_S` 1.0): the Online Retail II log (invoices
of up to 270 lines at one timestamp, 5,485 events for its busiest customer) passes without a
single event limited; a bot sending 100,000 events within an hour of event time gets ~4,100
through.

>>> limit = RateLimit(rate_per_s=1.0, burst=2)
>>> buckets = UserBuckets()
>>> [limit.allow(buckets, "bot", t) for t in (0, 0, 0, 500, 1000, 1000)]   # event times in ms
[True, True, False, False, True, False]
>>> limit.allow(buckets, "alice", 1000)   # other users have their own bucket
True
"""

from __future__ import annotations

from dataclasses import dataclass

from fastslow.errors import ConfigError
from streaming.events import EventProblem, InvalidEventError

DEFAULT_BURST = 500
DEFAULT_RATE_PER_S = 1.0
REASON_RATE_LIMITED = "rate limited"
"""Every rate-limited dead letter's reason starts with this."""
_MIN_PRUNE = 1024


class UserBuckets:
    """One partition's token buckets: per user (tokens, watermark when last updated), and
    the partition's watermark (latest event time seen, unix ms; None before the first).

    ``state`` is what snapshots keep; ``UserBuckets(state)`` restores it.
    """

    __slots__ = ("clock_ms", "tokens", "prune_at")

    def __init__(self, state: dict | None = None) -> None:
        state = state or {}
        self.clock_ms: int | None = state.get("clock_ms")
        self.tokens: dict[str, tuple[float, int]] = dict(state.get("users", {}))
        self.prune_at = max(_MIN_PRUNE, 2 * len(self.tokens))

    def __len__(self) -> int:
        return len(self.tokens)

    def state(self) -> dict:
        """A plain, picklable copy."""
        return {"clock_ms": self.clock_ms, "users": dict(self.tokens)}


@dataclass(frozen=True)
class RateLimit:
    """At most ``burst`` events of one user at once, refilled at ``rate_per_s`` per second of event time.

    Parameters
    ----------
    rate_per_s
        Tokens a user's bucket regains per second of event time (> 0).
    burst
        Bucket size (>= 1): events a user with a full bucket may send at one instant.
    """

    rate_per_s: float = DEFAULT_RATE_PER_S
    burst: float = DEFAULT_BURST

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0:
            raise ConfigError("rate_limit_per_s", self.rate_per_s, "events per second > 0")
        if not self.burst >= 1:
            raise ConfigError("rate_limit_burst", self.burst, "a number of events >= 1")

    def allow(self, buckets: UserBuckets, user_id: str, timestamp_ms: int) -> bool:
        """Whether ``user_id``'s event at ``timestamp_ms`` may be applied (spending a token if so)."""
        clock = buckets.clock_ms
        if clock is None or timestamp_ms > clock:
            clock = buckets.clock_ms = timestamp_ms
        held = buckets.tokens.get(user_id)
        tokens = self.burst if held is None else self._refilled(held, clock)
        allowed = tokens >= 1.0
        buckets.tokens[user_id] = (tokens - 1.0 if allowed else tokens, clock)
        if len(buckets.tokens) > buckets.prune_at:
            self.prune(buckets)
        return allowed

    def prune(self, buckets: UserBuckets) -> int:
        """Drop the buckets that are full again (no different from none); return how many."""
        clock = buckets.clock_ms
        full = [user for user, held in buckets.tokens.items() if self._refilled(held, clock) >= self.burst]
        for user in full:
            del buckets.tokens[user]
        buckets.prune_at = max(_MIN_PRUNE, 2 * len(buckets.tokens))
        return len(full)

    def _refilled(self, held: tuple[float, int], clock_ms: int) -> float:
        tokens, stamp = held
        return min(self.burst, tokens + (clock_ms - stamp) * self.rate_per_s / 1000.0)

    def describe(self) -> str:
        """The limit in words.

        >>> RateLimit(0.5, 100).describe()
        'at most 100 events at once, then 0.5 per second of event time, per user'
        """
        return f"at most {self.burst:g} events at once, then {self.rate_per_s:g} per second of event time, per user"


def rate_limited_error(user_id: str, limit: RateLimit) -> InvalidEventError:
    """The error a rate-limited event goes to the dead-letter topic with.

    >>> error = rate_limited_error("bot", RateLimit(1.0, 10))
    >>> error.field, error.reason.startswith(REASON_RATE_LIMITED)
    ('user_id', True)
    """
    return InvalidEventError([EventProblem("user_id", user_id, f"{REASON_RATE_LIMITED} ({limit.describe()})")])


def rate_limit_of(rate_per_s: float, burst: float) -> RateLimit | None:
    """The limit the settings ask for; None when ``rate_per_s`` is 0 (limiting off).

    >>> rate_limit_of(0.0, 500) is None, rate_limit_of(2.0, 50)
    (True, RateLimit(rate_per_s=2.0, burst=50))
    """
    return None if rate_per_s == 0 else RateLimit(rate_per_s, burst)
