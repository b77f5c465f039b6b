"""Slate policies as per-position action distributions (plain numpy).

Every policy maps contexts (user indices, ``(b,)``) to ``probs(users) -> (b, K, M)``:
the distribution over the ``M`` actions (column 0 = padding, always 0) at each of
the ``K`` slate positions. Bandits also ``update(users, actions, rewards)`` and run
online in the synthetic world through :func:`recsys.policies.simulation.simulate`.
This package never imports data, training or the CLI: models come in as score
functions, the world as any object with ``click_probability`` / ``relevance``.
"""
from __future__ import annotations

from recsys.policies.adapters import EpsilonGreedy, ScorePolicy, UniformPolicy
from recsys.policies.bandits import BernoulliTS, LinearTS, LinUCB
from recsys.policies.base import sample_positions, softmax, topk_onehot
from recsys.policies.simulation import SimulationResult, oracle_value, simulate

__all__ = ["BernoulliTS", "EpsilonGreedy", "LinUCB", "LinearTS", "ScorePolicy", "SimulationResult",
           "UniformPolicy", "oracle_value", "sample_positions", "simulate", "softmax", "topk_onehot"]
