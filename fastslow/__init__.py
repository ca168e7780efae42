"""fastslow: a streaming recommender with a fast per-user memory and a slow, consolidated ranker."""

__version__ = "0.1.0"
