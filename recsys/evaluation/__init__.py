"""Metrics on arrays: exact full ranking, beyond-accuracy (OPE, A/B, fairness later)."""
