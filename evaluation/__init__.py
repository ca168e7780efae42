"""Offline evaluation: the synthetic stream generator, prequential replay, peer policies."""
