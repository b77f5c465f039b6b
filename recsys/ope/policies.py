"""Evaluation policies on an OPE setup: the ``_target_`` of every ``configs/policy/*.yaml``.

Each builder takes the runtime arguments first (the :class:`Setup`, a seed) and
the config's options as keywords, so a config instantiated with ``_partial_: true``
is a ``make(setup, seed) -> policy``; a nested ``model`` config arrives as an
unfitted model and is fitted here on the setup's training split. Learning
policies (bandits: they have ``update``) start untrained; :func:`build_policy`
warms one up and freezes it before it is evaluated.

Example::

    make = functools.partial(model_policy, model=MarkovChain(), mode="softmax", temperature=0.5)
    pol, info = build_policy(setup, make, seed=0)
    pol.probs(setup.log.users[:4])  # (4, K, M)
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from recsys.ope.setup import Setup, fit_model, model_scores, user_features
from recsys.policies import BernoulliTS, EpsilonGreedy, LinearTS, LinUCB, ScorePolicy, UniformPolicy, simulate
from recsys.policies.simulation import relevance_all
from recsys.utils.errors import RecsysError

PolicyFactory = Callable[[Setup, int], Any]


def model_policy(s: Setup, seed: int, model: Any, mode: str = "topk", temperature: float = 1.0) -> ScorePolicy:
    """A model's scores as a slate policy: top-k (``mode="topk"``) or per-position softmax."""
    return ScorePolicy(model_scores(fit_model(model, s), s), s.n_actions, s.slate_size, mode, temperature)


def epsilon_greedy(s: Setup, seed: int, model: Any, epsilon: float = 0.1) -> EpsilonGreedy:
    """The model's per-position top-k with probability ``1 - epsilon``, else uniform."""
    return EpsilonGreedy(model_scores(fit_model(model, s), s), s.n_actions, s.slate_size, epsilon)


def uniform(s: Setup, seed: int) -> UniformPolicy:
    return UniformPolicy(s.n_actions, s.slate_size)


def oracle_softmax(s: Setup, seed: int, temperature: float = 0.5) -> ScorePolicy:
    """Softmax over the synthetic world's true relevance logits (needs the world's own log)."""
    if s.world is None:
        raise RecsysError("policy=oracle_softmax needs the synthetic world (no logs=)")
    m = s.n_actions
    rel_logit = lambda u: np.log(np.maximum(relevance_all(s.world, u, m), 1e-12))  # noqa: E731
    return ScorePolicy(rel_logit, m, s.slate_size, "softmax", temperature)


def _examination(s: Setup) -> np.ndarray | None:
    return s.world.truth["position_bias"] if s.world is not None else None


def linucb(s: Setup, seed: int, alpha: float = 1.0, l2: float = 1.0) -> LinUCB:
    """Disjoint LinUCB on one-hot user side features."""
    return LinUCB(user_features(s), s.n_actions, s.slate_size, alpha, l2, _examination(s))


def linear_ts(s: Setup, seed: int, v: float = 0.5, l2: float = 1.0, n_samples: int = 64) -> LinearTS:
    """Linear Thompson sampling; per-position distribution by seeded Monte Carlo."""
    return LinearTS(user_features(s), s.n_actions, s.slate_size, v, l2, _examination(s), n_samples, seed)


def bernoulli_ts(s: Setup, seed: int, n_samples: int = 256) -> BernoulliTS:
    """Context-free Beta-Bernoulli Thompson sampling; MC distribution (seeded)."""
    return BernoulliTS(s.n_actions, s.slate_size, examination=_examination(s), n_samples=n_samples, seed=seed)


def build_policy(s: Setup, make: PolicyFactory, seed: int, warmup_requests: int = 5000,
                 warmup_batch_size: int = 200) -> tuple[Any, dict[str, Any]]:
    """``make(s, seed)``; a learning policy is then trained and frozen: online in the
    synthetic world for ``warmup_requests`` requests (users drawn from the log), or,
    for a file log, on the first half of the log (then evaluated on the rest).

    Returns the policy and what was done (``warmup_regret_per_request`` or
    ``trained_on_requests``; empty for a policy that does not learn)."""
    pol = make(s, seed)
    info: dict[str, Any] = {}
    if not hasattr(pol, "update"):
        return pol, info
    if s.world is not None:  # warm up online in the world, then freeze
        rng = np.random.default_rng(seed)
        warm_users = rng.choice(s.log.users, warmup_requests)
        sim = simulate(pol, s.world, warm_users, s.n_actions, s.slate_size, batch_size=warmup_batch_size, seed=seed)
        info["warmup_regret_per_request"] = float(sim.regret.mean())
    else:  # learn from the first half of the log, evaluate on the rest
        half = s.log.n_requests // 2
        for st in range(0, half, warmup_batch_size):
            sl = slice(st, min(st + warmup_batch_size, half))
            pol.update(s.log.users[sl], s.log.actions[sl], s.log.rewards[sl])
        info["trained_on_requests"] = half
    return pol, info
