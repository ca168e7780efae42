"""The HTTP API (FastAPI): recommendations, event intake, user deletion, health and metrics."""
