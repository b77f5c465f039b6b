"""recsys: a GPU-accelerated deep recommender research framework."""

__version__ = "0.1.0"
