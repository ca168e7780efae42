"""One user floods the stream: the per-user rate limit lets through a bounded number of their
events, every other one is dead-lettered with its reason (none lost), and the flooder holds a
small share of fast memory and of the next consolidation sample."""

from __future__ import annotations

import pytest
from serving_fixtures import clustered_ranker

from infra.scenario_poison import poisoning
from streaming.ratelimit import RateLimit

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_a_flooding_user_is_rate_limited_and_cannot_dominate_memory_or_the_sample(broker, tmp_path):
    limit = RateLimit(1.0, 50)
    result = poisoning(broker, tmp_path, clustered_ranker(), users=100, per_user=10, flood=3000, limit=limit,
                       sample_size=500, seed=3)
    details = result.details

    assert details["bot_share_of_stream"] > 0.7  # unchecked, the bot would be most of what is learned
    assert details["limited_as_expected"]  # exactly the events the buckets refuse, replayed by hand
    assert details["rate_limited"] == details["dead_letters_rate_limited"] == 3000 - details["bot_applied"]
    assert 50 <= details["bot_applied"] <= details["bot_applied_bound"] == 50 + 60
    assert details["bot_share_of_learned"] < 0.15
    assert details["bot_memory_entries"] < 2 * details["memory_per_user"]  # the model trims at twice its cap
    assert details["bot_share_of_memory"] < 0.1
    # the sample (500 of the ~1,100 archived, spread over time) follows what was learned: the
    # refused events never reached the archive, and the flood's minute is one of many periods
    assert details["sample_size"] == 500
    assert details["bot_share_of_sample"] <= details["bot_share_of_learned"] < details["dominant_share"]
    # nothing silently lost: every event is either learned (and archived) or a dead letter
    assert result.produced == 4000 and result.lost == 0
    assert result.applied + details["dead_letters_rate_limited"] == 4000
    assert result.passed and result.name == "poison"
