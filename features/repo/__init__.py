"""The declarative Feast feature repository: definitions plus the `feature_store.yaml` template."""
