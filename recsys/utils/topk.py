"""Top-k over score rows (numpy), the one rule every layer uses: best first, equal
scores in id order (also at the cut), padding id 0 and seen ids excluded."""
from __future__ import annotations

import numpy as np


def top_k_rows(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``s`` (B, N): the ``k`` best columns, best first, ties to the smaller
    column, deterministically also at the cut (``argpartition`` alone picks any of the
    items tied at the k-th score); ``(ids (B, k) int64, scores (B, k))``."""
    part = np.argpartition(-s, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(s, part, 1)
    kth = vals.min(axis=1, keepdims=True)
    for r in np.flatnonzero((s >= kth).sum(axis=1) > k):  # more items tie at the cut than fit
        cand = np.flatnonzero(s[r] >= kth[r, 0])
        cand = cand[np.lexsort((cand, -s[r, cand]))[:k]]
        part[r], vals[r] = cand, s[r, cand]
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, 1).astype(np.int64), np.take_along_axis(vals, order, 1)


def mask_seen(scores: np.ndarray, items: np.ndarray | None) -> np.ndarray:
    """A float32 copy of ``scores`` (B, n_items + 1) with column 0 (padding) and, when
    given, every id of each row of ``items`` (B, T) set to -inf."""
    s = np.array(scores, dtype=np.float32, copy=True)
    s[:, 0] = -np.inf
    if items is not None:  # pads hit column 0 again
        s[np.repeat(np.arange(len(items)), items.shape[1]), np.asarray(items).ravel()] = -np.inf
    return s


def top_k_excluding(scores: np.ndarray, items: np.ndarray, k: int, exclude_seen: bool = True) -> np.ndarray:
    """``(B, k)`` ids of the highest ``scores`` (B, n_items + 1) by :func:`top_k_rows`;
    id 0 (padding) and, with ``exclude_seen``, the ids in ``items`` (B, T) never appear."""
    s = mask_seen(scores, items if exclude_seen else None)
    return top_k_rows(s, min(k, s.shape[1] - 1))[0]
