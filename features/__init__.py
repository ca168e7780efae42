"""The Feast feature repository, context lookup at scoring, point-in-time training frames.

* `features.repo.definitions` — the Feast objects (entities ``user``/``item``, four views,
  two push sources, the ``ranker_context`` service); `features.schema` — the same facts
  without Feast (keys, features, defaults).
* `features.repository` — render ``feature_store.yaml`` (sqlite or Redis online store,
  parquet offline store) and apply (`fastslow features apply`).
* `features.aggregates` / `features.attributes` — streaming user/item features and
  attribute rows from event micro-batches.
* `features.store.FeatureStoreClient` — `push_events` / `write_rows` (newer event time wins),
  `lookup(user_id, item_ids)` for scoring, counters of missing features.
* `features.training.training_frame` — point-in-time training frames.
* `features.offline` — the parquet parts behind the offline store;
  `features.online_store` — the sqlite online store with a faster read.
"""
