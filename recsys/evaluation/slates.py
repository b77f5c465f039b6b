"""NDCG of re-ranked slates or candidate lists (numpy only).

``slate_ndcg(group, label, score, k)`` re-ranks the rows of each group (a
logged slate, or one user's candidate list) by ``score`` (descending; ties keep
the smaller row index first) and averages NDCG@k of the 0/1 labels over the
groups with at least one positive (others have no ideal ranking and are
skipped; their count is reported).
"""
from __future__ import annotations

import numpy as np


def slate_ndcg(group: np.ndarray, label: np.ndarray, score: np.ndarray, k: int) -> dict[str, float]:
    """``{"ndcg": mean NDCG@k over groups with a positive, "groups": their count, "skipped": groups without}``."""
    g = np.asarray(group)
    y = np.asarray(label, dtype=np.float64)
    s = np.asarray(score, dtype=np.float64)
    if not (len(g) == len(y) == len(s)):
        raise ValueError(f"group, label, score lengths differ: {len(g)}, {len(y)}, {len(s)}")
    _, gid = np.unique(g, return_inverse=True)
    n_groups = int(gid.max()) + 1 if len(gid) else 0
    idx = np.arange(len(g))

    def dcg(order: np.ndarray) -> np.ndarray:
        gs = gid[order]
        start = np.r_[0, np.flatnonzero(gs[1:] != gs[:-1]) + 1]
        rank = np.arange(len(gs)) - np.repeat(start, np.diff(np.r_[start, len(gs)]))
        gain = np.where(rank < k, y[order] / np.log2(rank + 2.0), 0.0)
        return np.bincount(gs, gain, minlength=n_groups)

    got = dcg(np.lexsort((idx, -s, gid)))
    ideal = dcg(np.lexsort((idx, -y, gid)))
    has = ideal > 0
    return {"ndcg": float((got[has] / ideal[has]).mean()) if has.any() else float("nan"),
            "groups": int(has.sum()), "skipped": int((~has).sum())}
