"""Non-neural baselines: the floor every model must beat.

Each baseline has ``fit(users, items, n_users, n_items)`` on training
interactions (numpy arrays sorted by user, then time) and
``score(users, history) -> (B, n_items + 1)`` scores for the evaluator
(column 0 is padding). They take arrays, never data objects.
"""
from __future__ import annotations

import numpy as np

from recsys.utils.sparse import CSR


class Popularity:
    """Score = number of training interactions with the item (ties: lower id first)."""

    def fit(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> "Popularity":
        self.n_items = n_items
        self.counts = np.bincount(items, minlength=n_items + 1).astype(np.float32)
        self.counts[0] = 0.0
        return self

    def score(self, users: np.ndarray, history: CSR) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(users), self.n_items + 1))


class RandomScores:
    """Uniform random scores, seeded per user so results do not depend on batching."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> "RandomScores":
        self.n_items = n_items
        return self

    def score(self, users: np.ndarray, history: CSR) -> np.ndarray:
        out = np.empty((len(users), self.n_items + 1), dtype=np.float32)
        for r, u in enumerate(users):
            out[r] = np.random.default_rng([self.seed, int(u)]).random(self.n_items + 1, dtype=np.float32)
        return out


class MarkovChain:
    """First-order Markov chain: score(j | last item i) = count(i -> j) in the
    training sequences, plus ``backoff`` x normalised popularity, so that users
    whose last item was never followed still get a popularity ranking.

    A non-neural sequential baseline: on data with sequential dynamics it should
    beat popularity; sequence models should beat it.
    """

    def __init__(self, backoff: float = 1e-3):
        self.backoff = backoff

    def fit(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> "MarkovChain":
        self.n_items = n_items
        same_user = users[1:] == users[:-1]
        src, dst = items[:-1][same_user], items[1:][same_user]
        order = np.lexsort((dst, src))
        src, dst = src[order], dst[order]
        key = src * (n_items + 1) + dst
        uniq, counts = np.unique(key, return_counts=True)
        self.transitions = CSR.from_sorted_rows(uniq // (n_items + 1), uniq % (n_items + 1), n_items + 1)
        self.weights = counts.astype(np.float32)
        pop = np.bincount(items, minlength=n_items + 1).astype(np.float32)
        pop[0] = 0.0
        self.prior = self.backoff * pop / max(pop.max(), 1.0)
        return self

    def score(self, users: np.ndarray, history: CSR) -> np.ndarray:
        out = np.tile(self.prior, (len(users), 1))
        lens = history.lengths()
        has = np.flatnonzero(lens > 0)
        last = history.indices[history.indptr[1:][has] - 1]
        ptr = self.transitions.indptr
        n_next = ptr[last + 1] - ptr[last]
        rows = np.repeat(has, n_next)
        start = np.repeat(ptr[last], n_next)
        offs = np.arange(n_next.sum()) - np.repeat(np.cumsum(n_next) - n_next, n_next)
        cols = start + offs
        out[rows, self.transitions.indices[cols]] += self.weights[cols]
        return out


def _interaction_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> np.ndarray:
    """Dense binary user x item matrix ``(n_users + 1, n_items + 1)`` (float32)."""
    x = np.zeros((n_users + 1, n_items + 1), dtype=np.float32)
    x[users, items] = 1.0
    return x


def _history_rows(history: CSR, n_items: int) -> np.ndarray:
    """Binary ``(B, n_items + 1)`` rows of the users' histories."""
    x = np.zeros((history.n_rows, n_items + 1), dtype=np.float32)
    x[history.row_ids(), history.indices] = 1.0
    return x


class EASE:
    """Embarrassingly shallow autoencoder (Steck, 2019): a closed-form item-item
    model ``B = I - P / diag(P)`` with ``P = (X^T X + l2 I)^-1`` and ``diag(B) = 0``.
    Scores are ``history_row @ B``. Memory ``O(n_items^2)``."""

    def __init__(self, l2: float = 500.0):
        self.l2 = l2

    def fit(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> "EASE":
        self.n_items = n_items
        x = _interaction_matrix(users, items, n_users, n_items)[:, 1:].astype(np.float64)
        gram = x.T @ x
        gram[np.diag_indices_from(gram)] += self.l2
        p = np.linalg.inv(gram)
        b = -p / np.diag(p)[None, :]
        b[np.diag_indices_from(b)] = 0.0
        self.weights = np.zeros((n_items + 1, n_items + 1), dtype=np.float32)
        self.weights[1:, 1:] = b
        return self

    def score(self, users: np.ndarray, history: CSR) -> np.ndarray:
        return _history_rows(history, self.n_items) @ self.weights


class ItemKNN:
    """Item-based nearest neighbours with cosine similarity on the binary
    interaction matrix, ``k`` neighbours kept per item (``shrink`` damps
    similarities of rarely co-occurring items). Scores are ``history_row @ S``."""

    def __init__(self, k: int = 100, shrink: float = 10.0):
        self.k, self.shrink = k, shrink

    def fit(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> "ItemKNN":
        self.n_items = n_items
        x = _interaction_matrix(users, items, n_users, n_items)
        co = x.T @ x  # (n_items + 1)^2 co-occurrence counts
        norms = np.sqrt(np.diag(co)).astype(np.float32)
        sim = co / (norms[:, None] * norms[None, :] + self.shrink + 1e-12)
        np.fill_diagonal(sim, 0.0)
        sim[0, :] = sim[:, 0] = 0.0
        if self.k < n_items:  # keep the k most similar neighbours of every item (per column)
            cut = np.partition(sim, -self.k, axis=0)[-self.k]
            sim[sim < cut[None, :]] = 0.0
        self.weights = sim.astype(np.float32)
        return self

    def score(self, users: np.ndarray, history: CSR) -> np.ndarray:
        return _history_rows(history, self.n_items) @ self.weights
