"""The slow torch ranker, per-user fast weights, the FAISS episodic memory and item index, the gated scorer."""
