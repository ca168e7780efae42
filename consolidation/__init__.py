"""Replay sampling, EWC, the MLflow-tracked consolidation job, the promotion gate."""
