"""Turn any score function (e.g. a recsys model's ``score``) into a slate policy.

A score function maps user indices ``(b,)`` to ``(b, M)`` scores (column 0 =
padding), e.g. ``lambda u: model.score(u, history.take(rows_of(u)))`` for the
baselines in :mod:`recsys.models.baselines` or a trained sequence model.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from recsys.policies.base import softmax, topk_indices, topk_onehot, valid_mask

ScoreFn = Callable[[np.ndarray], np.ndarray]


class ScorePolicy:
    """Deterministic top-k (``mode="topk"``: position k gets the k-th best item)
    or stochastic (``mode="softmax"``: every position draws from
    ``softmax(scores / temperature)``, independently).

    Args:
        score_fn: users ``(b,)`` -> scores ``(b, M)``.
        n_actions: M (including the padding column 0).
        slate_size: K.

    Example::

        pol = ScorePolicy(lambda u: np.tile(np.arange(6.0), (len(u), 1)), 6, 2)
        pol.probs(np.array([1]))  # (1, 2, 6): position 0 -> item 5, position 1 -> item 4
    """

    def __init__(self, score_fn: ScoreFn, n_actions: int, slate_size: int, mode: str = "topk",
                 temperature: float = 1.0):
        if mode not in ("topk", "softmax"):
            raise ValueError(f"mode must be 'topk' or 'softmax', got {mode!r}")
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.score_fn, self.n_actions, self.slate_size = score_fn, n_actions, slate_size
        self.mode, self.temperature = mode, temperature

    def scores(self, users: np.ndarray) -> np.ndarray:
        s = np.asarray(self.score_fn(np.asarray(users, dtype=np.int64)), dtype=np.float64)
        assert s.shape == (len(users), self.n_actions), (s.shape, len(users), self.n_actions)
        return s

    def probs(self, users: np.ndarray) -> np.ndarray:
        s = self.scores(users)
        if self.mode == "topk":
            return topk_onehot(s, self.slate_size)
        return np.repeat(softmax(s, self.temperature)[:, None, :], self.slate_size, axis=1)


class EpsilonGreedy(ScorePolicy):
    """Per position: the k-th best item with probability ``1 - eps``, else uniform
    over the ``M - 1`` valid actions, so the k-th best gets ``1 - eps + eps / (M - 1)``."""

    def __init__(self, score_fn: ScoreFn, n_actions: int, slate_size: int, epsilon: float = 0.1):
        super().__init__(score_fn, n_actions, slate_size, "topk")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError("epsilon must be in [0, 1]")
        self.epsilon = epsilon

    def probs(self, users: np.ndarray) -> np.ndarray:
        s = self.scores(users)
        uniform = valid_mask(self.n_actions) / (self.n_actions - 1.0)
        out = np.broadcast_to(self.epsilon * uniform, (len(s), self.slate_size, self.n_actions)).copy()
        top = topk_indices(s, self.slate_size)  # (b, K)
        out[np.arange(len(s))[:, None], np.arange(self.slate_size)[None, :], top] += 1.0 - self.epsilon
        return out


class UniformPolicy:
    """Every valid action equally likely at every position (the random baseline)."""

    def __init__(self, n_actions: int, slate_size: int):
        self.n_actions, self.slate_size = n_actions, slate_size

    def probs(self, users: np.ndarray) -> np.ndarray:
        row = valid_mask(self.n_actions) / (self.n_actions - 1.0)
        return np.broadcast_to(row, (len(users), self.slate_size, self.n_actions)).copy()


def reindex_columns(probs: np.ndarray, columns: np.ndarray, n_target: int) -> np.ndarray:
    """Move action columns into another action space.

    Args:
        probs: ``(..., M)`` in the source space.
        columns: ``(M,)`` target column of each source column (-1: dropped).
        n_target: size of the target space.
    Returns:
        ``(..., n_target)``; target columns without a source get 0.
    """
    out = np.zeros(probs.shape[:-1] + (n_target,))
    keep = columns >= 0
    out[..., columns[keep]] = probs[..., keep]
    return out
