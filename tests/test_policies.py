"""Policies: valid distributions, epsilon-greedy mass, bandits learn online."""
from __future__ import annotations

import numpy as np
import pytest

from recsys.data.synthetic import SyntheticConfig, generate_world
from recsys.policies import (BernoulliTS, EpsilonGreedy, LinearTS, LinUCB, ScorePolicy, UniformPolicy,
                             oracle_value, sample_positions, simulate)
from recsys.policies.adapters import reindex_columns

M, K = 8, 3


def _scores(users: np.ndarray) -> np.ndarray:
    return np.random.default_rng(0).random((10, M))[users]


def _valid(p: np.ndarray, n: int) -> None:
    assert p.shape == (n, K, M)
    assert np.allclose(p.sum(axis=2), 1.0)
    assert (p >= 0).all() and np.allclose(p[..., 0], 0.0)


@pytest.mark.parametrize("make", [
    lambda: ScorePolicy(_scores, M, K, "topk"),
    lambda: ScorePolicy(_scores, M, K, "softmax", 0.3),
    lambda: EpsilonGreedy(_scores, M, K, 0.2),
    lambda: UniformPolicy(M, K),
    lambda: LinUCB(np.eye(10), M, K),
    lambda: LinearTS(np.eye(10), M, K, n_samples=32),
    lambda: BernoulliTS(M, K, n_samples=32),
], ids=["topk", "softmax", "eps", "uniform", "linucb", "lints", "bts"])
def test_distributions_are_valid(make):
    users = np.array([1, 2, 5])
    _valid(make().probs(users), 3)


def test_topk_positions_and_epsilon_mass():
    users = np.array([0, 3])
    order = np.argsort(-np.where(np.arange(M) > 0, _scores(users), -np.inf), axis=1, kind="stable")[:, :K]
    p = ScorePolicy(_scores, M, K, "topk").probs(users)
    assert (p.argmax(axis=2) == order).all() and (p.max(axis=2) == 1.0).all()
    eps = 0.3
    e = EpsilonGreedy(_scores, M, K, eps).probs(users)
    n = M - 1
    assert np.allclose(np.take_along_axis(e, order[..., None], 2)[..., 0], 1 - eps + eps / n)
    assert np.isclose(np.sort(e[0, 0])[1], eps / n)


def test_ts_distribution_is_deterministic_and_sampling_matches():
    pol = LinearTS(np.random.default_rng(1).standard_normal((10, 4)), M, K, n_samples=64, seed=3)
    assert np.array_equal(pol.probs(np.array([1, 2])), pol.probs(np.array([1, 2])))
    p = ScorePolicy(_scores, M, K, "softmax", 0.5).probs(np.array([1]))
    draws = sample_positions(np.repeat(p, 20000, axis=0), np.random.default_rng(0))
    freq = np.stack([np.bincount(draws[:, k], minlength=M) / 20000 for k in range(K)])
    assert np.abs(freq - p[0]).max() < 0.015


def test_reindex_columns():
    out = reindex_columns(np.array([[0.0, 0.6, 0.4]]), np.array([0, 3, -1]), 4)
    assert out.tolist() == [[0.0, 0.0, 0.0, 0.6]]


@pytest.fixture(scope="module")
def world():
    return generate_world(SyntheticConfig(n_users=100, n_items=30, n_requests=100, slate_size=3, seed=1))


def test_oracle_is_best_and_bandits_beat_random(world):
    m, k = world.config.n_items + 1, world.config.slate_size
    users = np.random.default_rng(0).integers(1, world.config.n_users + 1, 3000)
    feats = np.zeros((world.config.n_users + 1, world.truth["user_factors"].shape[1] + 1))
    feats[:, 0] = 1.0
    feats[:, 1:] = world.truth["user_factors"]
    exam = world.truth["position_bias"]
    random = simulate(UniformPolicy(m, k), world, users, m, k, batch_size=100, seed=0)
    assert (random.regret > -1e-12).all()
    half = len(users) // 2
    # contextual bandits must get far below random; context-free Bernoulli TS less so
    for pol, share in ((LinUCB(feats, m, k, alpha=0.5, examination=exam), 0.6),
                       (LinearTS(feats, m, k, v=0.3, examination=exam, n_samples=32), 0.6),
                       (BernoulliTS(m, k, examination=exam, n_samples=64), 0.8)):
        res = simulate(pol, world, users, m, k, batch_size=100, seed=0)
        assert res.cumulative_regret[-1] < random.cumulative_regret[-1], type(pol).__name__
        assert res.regret[half:].mean() < res.regret[:half].mean(), type(pol).__name__
        assert res.regret[half:].mean() < share * random.regret[half:].mean(), type(pol).__name__
        assert np.allclose(res.propensities > 0, True)
    assert np.allclose(oracle_value(world, users, m, k) - random.expected_reward, random.regret)


def test_ope_regret_command_bandits_learn_online(tmp_path):
    import json

    from tests.helpers import run

    out = tmp_path / "run"
    res = run("ope", "regret", "data.n_users=300", "data.n_items=100", "regret.n_requests=4000",
              "regret.policies=[uniform,linucb,bernoulli_ts]", f"paths.cache_dir={tmp_path / 'cache'}",
              f"hydra.run.dir={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    rows = s["regret"]
    assert set(rows) == {"uniform", "linucb", "bernoulli_ts"}
    assert rows["uniform"]["regret@4000"] > rows["bernoulli_ts"]["regret@4000"]
    for name in ("linucb", "bernoulli_ts"):  # after learning, bandits serve better slates than uniform
        assert rows[name]["value_end"] > 1.2 * rows["uniform"]["value_end"]
    assert 0 < rows["bernoulli_ts"]["value_end"] < s["oracle_value"]
    assert (out / "regret.png").is_file()
