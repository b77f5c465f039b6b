"""Beyond-accuracy metrics on recommended top-K lists.

All functions take ``top`` as an ``(U, K)`` int array of item ids (best first,
``0`` = no item) and return floats. Item statistics are arrays indexed by item id
(length ``n_items + 1``, entry 0 unused).
"""
from __future__ import annotations

import numpy as np


def _valid(top: np.ndarray) -> np.ndarray:
    return top > 0


def catalogue_coverage(top: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one list."""
    items = np.unique(top[_valid(top)])
    return float(len(items) / n_items) if n_items else 0.0


def novelty(top: np.ndarray, item_counts: np.ndarray, n_users: int) -> float:
    """Mean self-information ``-log2((c_i + 1) / (n_users + 1))`` of recommended
    items, where ``c_i`` is the number of training users who interacted with i
    (add-one smoothing keeps unseen items finite)."""
    v = _valid(top)
    if not v.any():
        return float("nan")
    p = (item_counts[top[v]] + 1.0) / (n_users + 1.0)
    return float(np.mean(-np.log2(p)))


def average_popularity(top: np.ndarray, item_counts: np.ndarray) -> float:
    """Average recommended popularity (ARP): mean training count of listed items,
    averaged per user first."""
    v = _valid(top)
    counts = np.where(v, item_counts[top], 0.0)
    n = v.sum(1)
    keep = n > 0
    return float(np.mean(counts[keep].sum(1) / n[keep])) if keep.any() else float("nan")


def gini_index(top: np.ndarray, n_items: int) -> float:
    """Gini coefficient of how often each catalogue item is recommended
    (0 = every item equally often, -> 1 = a few items get everything)."""
    freq = np.bincount(top[_valid(top)], minlength=n_items + 1)[1:].astype(np.float64)
    total = freq.sum()
    if total == 0 or n_items == 0:
        return float("nan")
    freq.sort()
    n = len(freq)
    ranks = np.arange(1, n + 1)
    return float(np.sum((2 * ranks - n - 1) * freq) / (n * total))


def intra_list_diversity_categories(top: np.ndarray, item_category: np.ndarray) -> float:
    """Mean share of item pairs in a list whose categories differ.

    ``item_category``: ``(n_items + 1,)`` integer category code per item.
    Lists with fewer than two items are skipped.
    """
    v = _valid(top)
    cats = np.where(v, item_category[top], -1)
    n_cat = int(item_category.max()) + 1 if len(item_category) else 1
    diversities = []
    n = v.sum(1)
    for row in np.flatnonzero(n >= 2):
        c = np.bincount(cats[row][v[row]], minlength=n_cat)
        pairs = n[row] * (n[row] - 1) / 2
        same = float(np.sum(c * (c - 1) / 2))
        diversities.append(1.0 - same / pairs)
    return float(np.mean(diversities)) if diversities else float("nan")


def intra_list_diversity_embeddings(top: np.ndarray, item_embeddings: np.ndarray, batch_size: int = 4096) -> float:
    """Mean pairwise cosine distance ``1 - cos(e_i, e_j)`` within each list."""
    vals = []
    norms = item_embeddings / np.maximum(np.linalg.norm(item_embeddings, axis=1, keepdims=True), 1e-12)
    for s in range(0, len(top), batch_size):
        t = top[s : s + batch_size]
        v = _valid(t)
        e = norms[t] * v[..., None]  # (B, K, D)
        gram = np.einsum("bkd,bjd->bkj", e, e)
        n = v.sum(1)
        off_diag = gram.sum((1, 2)) - np.einsum("bkk->b", gram)
        pairs = n * (n - 1)
        keep = pairs > 0
        vals.append(1.0 - off_diag[keep] / pairs[keep])
    out = np.concatenate(vals) if vals else np.zeros(0)
    return float(out.mean()) if len(out) else float("nan")


def beyond_accuracy(
    top: np.ndarray,
    n_items: int,
    item_counts: np.ndarray,
    n_train_users: int,
    item_category: np.ndarray | None = None,
    item_embeddings: np.ndarray | None = None,
) -> dict[str, float]:
    """All beyond-accuracy metrics for lists of length ``K = top.shape[1]``."""
    k = top.shape[1]
    out = {
        f"coverage@{k}": catalogue_coverage(top, n_items),
        f"novelty@{k}": novelty(top, item_counts, n_train_users),
        f"arp@{k}": average_popularity(top, item_counts),
        f"gini@{k}": gini_index(top, n_items),
    }
    if item_category is not None:
        out[f"ild_category@{k}"] = intra_list_diversity_categories(top, item_category)
    if item_embeddings is not None:
        out[f"ild_embedding@{k}"] = intra_list_diversity_embeddings(top, item_embeddings)
    return out
