"""Run a policy online in the synthetic world and measure its regret.

``world`` is any object with ``click_probability(user, item, position)`` and
``relevance(user, item)`` (broadcastable integer arrays), such as
:class:`recsys.data.synthetic.SyntheticWorld`. Requests are processed in batches
(one policy call and one update per batch, vectorised inside); each position's
action is drawn from the policy's per-position distribution, its propensity
logged, and a click drawn with the world's true probability.

Regret is measured in expectation (no click noise): per request,
``oracle_value(user) - sum_k click_probability(user, a_k, k)``, where the oracle
shows the K most relevant items in decreasing order of relevance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.policies.base import sample_positions


@dataclass
class SimulationResult:
    """Online run: per-request arrays (``T`` requests, ``K`` positions)."""

    users: np.ndarray  # (T,)
    actions: np.ndarray  # (T, K)
    propensities: np.ndarray  # (T, K) the policy's probability of each shown action
    clicks: np.ndarray  # (T, K) int8
    expected_reward: np.ndarray  # (T,) expected clicks of the shown slate
    regret: np.ndarray  # (T,) oracle minus expected clicks

    @property
    def cumulative_regret(self) -> np.ndarray:
        return np.cumsum(self.regret)


def relevance_all(world: Any, users: np.ndarray, n_actions: int) -> np.ndarray:
    """True relevance of every action (column 0 = 0): (b, M)."""
    rel = world.relevance(np.asarray(users, dtype=np.int64)[:, None], np.arange(n_actions)[None, :])
    rel[:, 0] = 0.0
    return rel


def oracle_value(world: Any, users: np.ndarray, n_actions: int, slate_size: int) -> np.ndarray:
    """Expected clicks of the oracle slate per user: (b,)."""
    rel = relevance_all(world, users, n_actions)
    top = -np.sort(-rel, axis=1)[:, :slate_size]  # (b, K) most relevant first
    k = np.arange(slate_size)
    pb = world.click_probability(np.ones(1, dtype=np.int64), np.ones(1, dtype=np.int64), k) / \
        world.relevance(np.ones(1, dtype=np.int64), np.ones(1, dtype=np.int64))
    return top @ pb


def simulate(policy: Any, world: Any, users: np.ndarray, n_actions: int, slate_size: int,
             batch_size: int = 100, seed: int = 0, learn: bool = True) -> SimulationResult:
    """Serve ``users`` (``(T,)``, in order) with ``policy``; update it after every
    batch when ``learn`` and it has ``update(users, actions, rewards)``."""
    rng = np.random.default_rng(seed)
    users = np.asarray(users, dtype=np.int64)
    t = len(users)
    k = slate_size
    actions = np.zeros((t, k), dtype=np.int64)
    props = np.zeros((t, k))
    clicks = np.zeros((t, k), dtype=np.int8)
    expected = np.zeros(t)
    regret = np.zeros(t)
    pos = np.arange(k)[None, :]
    for s in range(0, t, batch_size):
        ub = users[s:s + batch_size]
        p = policy.probs(ub)  # (b, K, M)
        a = sample_positions(p, rng)
        pc = world.click_probability(ub[:, None], a, pos)  # (b, K)
        r = (rng.random(pc.shape) < pc).astype(np.int8)
        actions[s:s + len(ub)], clicks[s:s + len(ub)] = a, r
        props[s:s + len(ub)] = np.take_along_axis(p, a[..., None], axis=2)[..., 0]
        expected[s:s + len(ub)] = pc.sum(axis=1)
        regret[s:s + len(ub)] = oracle_value(world, ub, n_actions, k) - pc.sum(axis=1)
        if learn and hasattr(policy, "update"):
            policy.update(ub, a, r)
    return SimulationResult(users, actions, props, clicks, expected, regret)
