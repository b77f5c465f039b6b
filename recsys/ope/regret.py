"""The study behind ``recsys ope regret``: policies served online in the synthetic
world (bandits learn after every batch), cumulative regret against the oracle slate."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from recsys.ope.policies import PolicyFactory
from recsys.ope.setup import Setup
from recsys.policies import oracle_value, simulate
from recsys.utils.errors import RecsysError

CHECKPOINTS = (1000, 5000, 10000, 50000)


def run_regret(s: Setup, policies: Mapping[str, PolicyFactory], n_requests: int, batch_size: int, seed: int,
               plot_path: str | Path | None = None) -> dict[str, Any]:
    """Serve ``n_requests`` requests (users drawn from the log with ``seed``) with each
    policy, built untrained by its factory (name -> ``make(setup, seed)``).

    Returns a JSON-ready dict: ``regret`` (name -> cumulative regret at the checkpoints
    ``regret@<n>`` and ``value_end``, expected clicks per slate over the last 10% of
    requests), ``oracle_value`` (the same for the oracle), ``n_requests``,
    ``batch_size``, ``slate_size``, ``plot``, ``timings``.
    """
    t0 = time.perf_counter()
    if s.world is None:
        raise RecsysError("`recsys ope regret` needs data=synthetic")
    m, k = s.n_actions, s.slate_size
    users = np.random.default_rng(seed).choice(s.log.users, n_requests)
    checkpoints = sorted({c for c in CHECKPOINTS if c < n_requests} | {n_requests})
    tail = max(1, len(users) // 10)
    curves, rows = {}, {}
    for name, make in policies.items():
        sim = simulate(make(s, seed), s.world, users, m, k, batch_size=batch_size, seed=seed)
        cum = sim.cumulative_regret
        curves[name] = cum
        rows[name] = {f"regret@{c}": float(cum[c - 1]) for c in checkpoints}
        rows[name]["value_end"] = float(sim.expected_reward[-tail:].mean())
    oracle = float(np.mean(oracle_value(s.world, users[-tail:], m, k)))
    out: dict[str, Any] = {"regret": rows, "oracle_value": oracle, "n_requests": n_requests,
                           "batch_size": batch_size, "slate_size": k}
    if plot_path is not None:
        from recsys.evaluation.ope_report import plot_regret

        out["plot"] = str(plot_regret(plot_path, curves))
    out["timings"] = {"total_s": time.perf_counter() - t0}
    return out
