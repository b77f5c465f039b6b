"""Contextual and context-free bandits over the item catalogue, with slates.

Contexts are user indices into a feature matrix ``features (n_users + 1, d)``.
Rewards at position ``k`` follow the position-based model
``P(click) = examination[k] * mean(user, item)``; passing ``examination`` (e.g. the
known or separately estimated position bias) lets every position teach the
bandit without biasing it towards items shown high. Default: all ones.

* :class:`LinUCB`: disjoint per-item ridge regressions; position k shows the
  item with the k-th highest upper confidence bound (deterministic, so its
  distribution is one-hot per position).
* :class:`LinearTS`: the same posterior, sampled; the per-position distribution
  is estimated by Monte Carlo with ``n_samples`` draws from a generator seeded
  by ``seed`` and the call's users, so ``probs`` is deterministic and the policy
  that runs online is exactly this MC distribution (its propensities are exact).
* :class:`BernoulliTS`: context-free Beta posterior per item, same MC scheme.
"""
from __future__ import annotations

import numpy as np

from recsys.policies.base import mc_topk_distribution, topk_onehot, valid_mask


class _Linear:
    """Per-item ridge posterior ``A_j = l2 I + sum e^2 x x^T``, ``b_j = sum e r x``."""

    def __init__(self, features: np.ndarray, n_actions: int, slate_size: int, l2: float = 1.0,
                 examination: np.ndarray | None = None):
        self.x = np.asarray(features, dtype=np.float64)
        self.n_actions, self.slate_size = n_actions, slate_size
        d = self.x.shape[1]
        self.a = np.broadcast_to(l2 * np.eye(d), (n_actions, d, d)).copy()
        self.b = np.zeros((n_actions, d))
        self.exam = np.ones(slate_size) if examination is None else np.asarray(examination, dtype=np.float64)
        self._refresh()

    def _refresh(self) -> None:
        self.a_inv = np.linalg.inv(self.a)  # (M, d, d)
        self.theta = np.einsum("mde,me->md", self.a_inv, self.b)  # (M, d)

    def update(self, users: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> None:
        """``users (n,)``, ``actions (n, K)``, ``rewards (n, K)``: one batched posterior update."""
        x = self.x[np.asarray(users, dtype=np.int64)]  # (n, d)
        n, k = actions.shape
        e = np.broadcast_to(self.exam[:k], (n, k))
        xe = (x[:, None, :] * e[..., None]).reshape(n * k, -1)  # (n K, d)
        j = np.asarray(actions).ravel()
        np.add.at(self.a, j, np.einsum("nd,ne->nde", xe, xe))
        np.add.at(self.b, j, xe * np.asarray(rewards, dtype=np.float64).reshape(-1, 1))
        self._refresh()

    def mean_std(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and std of ``x . theta_j`` for every item: two (b, M)."""
        x = self.x[np.asarray(users, dtype=np.int64)]
        mean = x @ self.theta.T
        var = np.einsum("bd,mde,be->bm", x, self.a_inv, x)
        return mean, np.sqrt(np.maximum(var, 0.0))


class LinUCB(_Linear):
    """Score ``mean + alpha * std``; deterministic top-k slate."""

    def __init__(self, features: np.ndarray, n_actions: int, slate_size: int, alpha: float = 1.0,
                 l2: float = 1.0, examination: np.ndarray | None = None):
        super().__init__(features, n_actions, slate_size, l2, examination)
        self.alpha = alpha

    def probs(self, users: np.ndarray) -> np.ndarray:
        mean, std = self.mean_std(users)
        return topk_onehot(mean + self.alpha * std, self.slate_size)


class LinearTS(_Linear):
    """Thompson sampling with the Gaussian posterior scaled by ``v``; MC distribution."""

    def __init__(self, features: np.ndarray, n_actions: int, slate_size: int, v: float = 0.5,
                 l2: float = 1.0, examination: np.ndarray | None = None, n_samples: int = 64, seed: int = 0):
        super().__init__(features, n_actions, slate_size, l2, examination)
        self.v, self.n_samples, self.seed = v, n_samples, seed

    def probs(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        mean, std = self.mean_std(users)
        rng = np.random.default_rng([self.seed, len(users), int(users.sum()) % (1 << 31)])
        samples = mean[None] + self.v * std[None] * rng.standard_normal((self.n_samples, *mean.shape))
        return mc_topk_distribution(samples, self.slate_size)


class BernoulliTS:
    """Beta(a0 + clicks, b0 + max(examinations - clicks, 0)) per item, context-free.

    ``examinations`` adds ``examination[k]`` for each showing at position k, so the
    posterior mean estimates the position-free click rate.
    """

    def __init__(self, n_actions: int, slate_size: int, a0: float = 1.0, b0: float = 1.0,
                 examination: np.ndarray | None = None, n_samples: int = 256, seed: int = 0):
        self.n_actions, self.slate_size = n_actions, slate_size
        self.a0, self.b0, self.n_samples, self.seed = a0, b0, n_samples, seed
        self.exam = np.ones(slate_size) if examination is None else np.asarray(examination, dtype=np.float64)
        self.clicks = np.zeros(n_actions)
        self.shows = np.zeros(n_actions)
        self._version = 0

    def update(self, users: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> None:
        n, k = actions.shape
        self.clicks += np.bincount(actions.ravel(), weights=np.asarray(rewards, dtype=np.float64).ravel(),
                                   minlength=self.n_actions)
        self.shows += np.bincount(actions.ravel(), weights=np.broadcast_to(self.exam[:k], (n, k)).ravel(),
                                  minlength=self.n_actions)
        self._version += 1

    def distribution(self) -> np.ndarray:
        """The context-free ``(K, M)`` per-position distribution (MC, seeded)."""
        rng = np.random.default_rng([self.seed, self._version])
        a = self.a0 + self.clicks
        b = self.b0 + np.maximum(self.shows - self.clicks, 0.0)
        samples = rng.beta(a, b, size=(self.n_samples, self.n_actions)) * valid_mask(self.n_actions)
        return mc_topk_distribution(samples[:, None, :], self.slate_size)[0]

    def probs(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.distribution(), (len(users), self.slate_size, self.n_actions)).copy()
