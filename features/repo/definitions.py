"""Feast objects of the fastslow feature repository (entities, sources, views, one service).

Declarative and import-only: nothing here touches disk. `features.repository.apply_repo`
registers these objects in a repository directory whose ``feature_store.yaml`` says where the
online store (sqlite or Redis) and the parquet offline store live. File sources use paths relative
to that directory, so one definition serves every data directory.

Each streaming view is fed two ways by `features.store.FeatureStoreClient`: its `PushSource`
carries micro-batches to the online store, and the same rows are appended as parquet parts
under the push source's batch source, which `get_historical_features` reads for
point-in-time training frames.

>>> [fv.name for fv in FEATURE_VIEWS]
['user_stream', 'user_attributes', 'item_stream', 'item_attributes']
>>> [f.name for f in item_stream.features]
['pop_short', 'pop_long', 'pop_trend']
"""

from __future__ import annotations

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Float64, Int64, String

from features.schema import OFFLINE_DIR, TIMESTAMP

# The person being recommended to; join key matches the event log's `user_id` column.
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING,
              description="A user of the recommender (event log column user_id).")

# A recommendable item; join key matches the event log's `item_id` column.
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING,
              description="A recommendable item (event log column item_id).")


def _parquet_source(view: str) -> FileSource:
    return FileSource(name=f"{view}_parquet", path=f"{OFFLINE_DIR}/{view}",
                      timestamp_field=TIMESTAMP)


# The worker pushes per-user activity aggregates here each micro-batch; the parquet batch
# source keeps every pushed row so training frames can look values up as of any past time.
user_stream_push = PushSource(name="user_stream_push", batch_source=_parquet_source("user_stream"))

# Same for per-item popularity aggregates (every worker sees its share of each item's events).
item_stream_push = PushSource(name="item_stream_push", batch_source=_parquet_source("item_stream"))

# What a user has been doing lately: the slow ranker and the gate use it to tell an active
# session (trust the fast path) from a returning user (trust the slow model).
user_stream = FeatureView(
    name="user_stream",
    entities=[user],
    ttl=timedelta(0),
    schema=[
        Field(name="events_1h", dtype=Int64, description="events in the hour up to the row's time"),
        Field(name="events_1d", dtype=Int64, description="events in the day up to the row's time"),
        Field(name="distinct_items_1d", dtype=Int64, description="distinct items in that day"),
        Field(name="last_item", dtype=String, description="item of the user's latest event"),
        Field(name="last_event_type", dtype=String, description="type of the latest event"),
        Field(name="seconds_since_prev", dtype=Float64,
              description="gap between the latest event and the one before it"),
    ],
    source=user_stream_push,
    online=True,
)

# Attributes a log attaches to its users (context keys user_segment, user_country), so the
# slow ranker can generalise to users it has few events for.
user_attributes = FeatureView(
    name="user_attributes",
    entities=[user],
    ttl=timedelta(0),
    schema=[Field(name="segment", dtype=String), Field(name="country", dtype=String)],
    source=_parquet_source("user_attributes"),
    online=True,
)

# Recent popularity of each item over a short and a long window and their ratio: trending
# items for cold users, and a freshness signal the ranker cannot get from item embeddings.
item_stream = FeatureView(
    name="item_stream",
    entities=[item],
    ttl=timedelta(0),
    schema=[
        Field(name="pop_short", dtype=Int64, description="interactions in the short window"),
        Field(name="pop_long", dtype=Int64, description="interactions in the long window"),
        Field(name="pop_trend", dtype=Float64,
              description="short-window rate over long-window rate; 1 = steady, >1 rising"),
    ],
    source=item_stream_push,
    online=True,
)

# Catalogue attributes a log carries (context keys category, price): they give brand-new
# items, which have no interactions yet, something the ranker can score.
item_attributes = FeatureView(
    name="item_attributes",
    entities=[item],
    ttl=timedelta(0),
    schema=[Field(name="category", dtype=String), Field(name="price", dtype=Float64)],
    source=_parquet_source("item_attributes"),
    online=True,
)

#: Every feature view, in the order lookups and training frames report them.
FEATURE_VIEWS = [user_stream, user_attributes, item_stream, item_attributes]

# The one set of features scoring reads online and training reads offline: declaring it once
# keeps the slow ranker's inputs identical at training and serving time.
ranker_context = FeatureService(name="ranker_context", features=FEATURE_VIEWS)

#: Everything `apply_repo` registers.
OBJECTS = [user, item, user_stream_push, item_stream_push, *FEATURE_VIEWS, ranker_context]
