"""Shared helpers: masked softmax, per-position top-k, sampling, MC distributions."""
from __future__ import annotations

from typing import Protocol

import numpy as np


class Policy(Protocol):
    slate_size: int
    n_actions: int

    def probs(self, users: np.ndarray) -> np.ndarray:
        """``(b,)`` user indices -> ``(b, K, M)`` per-position distributions."""
        ...


def valid_mask(n_actions: int) -> np.ndarray:
    """``(M,)`` bool: every action but the padding column 0."""
    m = np.ones(n_actions, dtype=bool)
    m[0] = False
    return m


def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row softmax of ``scores / temperature`` over columns 1..M-1 (column 0 gets 0): (b, M)."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = np.where(valid_mask(z.shape[-1]), z, -np.inf)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def topk_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best valid actions per row, best first (ties: lower index): (b, k)."""
    s = np.where(valid_mask(scores.shape[-1]), np.asarray(scores, dtype=np.float64), -np.inf)
    return np.argsort(-s, axis=-1, kind="stable")[..., :k]


def onehot_positions(idx: np.ndarray, n_actions: int) -> np.ndarray:
    """``(b, K)`` action per position -> ``(b, K, M)`` one-hot distributions."""
    b, k = idx.shape
    out = np.zeros((b, k, n_actions))
    out[np.arange(b)[:, None], np.arange(k)[None, :], idx] = 1.0
    return out


def topk_onehot(scores: np.ndarray, k: int) -> np.ndarray:
    """Deterministic slate: position ``k`` shows the k-th best item. ``(b, M)`` -> ``(b, K, M)``."""
    return onehot_positions(topk_indices(scores, k), scores.shape[-1])


def mc_topk_distribution(samples: np.ndarray, k: int) -> np.ndarray:
    """Per-position frequencies of the top-k of sampled scores.

    Args:
        samples: ``(S, b, M)`` sampled scores (column 0 is ignored).
    Returns:
        ``(b, K, M)``: share of the ``S`` samples in which action ``j`` was k-th.
    """
    s, b, m = samples.shape
    top = topk_indices(samples, k)  # (S, b, K)
    key = (np.arange(b)[None, :, None] * k + np.arange(k)[None, None, :]) * m + top
    return np.bincount(key.ravel(), minlength=b * k * m).reshape(b, k, m) / s


def sample_positions(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one action per (row, position) from ``(b, K, M)`` distributions: (b, K) int64.

    Positions are drawn independently (a slate may repeat an item when the policy
    is stochastic; the value under the independent-position model is unchanged).
    """
    cum = np.cumsum(probs, axis=-1)
    u = rng.random(probs.shape[:-1])[..., None] * cum[..., -1:]
    idx = (cum <= u).sum(axis=-1)
    return np.minimum(idx, probs.shape[-1] - 1).astype(np.int64)
