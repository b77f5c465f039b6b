"""OPE estimators on small bandit problems with known truth."""
from __future__ import annotations

import numpy as np
import pytest

from recsys.evaluation import ope as O
from recsys.evaluation.ope_reward import CTRRewardModel, crossfit_ope_data

M, K = 6, 2  # actions 1..5 (0 = padding), 2 positions
REL = np.array([0.0, 0.1, 0.2, 0.3, 0.5, 0.7])
EXAM = np.array([1.0, 0.5])
LOGGER = np.array([0.0, 0.3, 0.25, 0.2, 0.15, 0.1])
TARGET = np.array([0.0, 0.05, 0.05, 0.1, 0.3, 0.5])
TRUE_VALUE = float(EXAM.sum() * (TARGET * REL).sum())


def _problem(seed: int, n: int = 2000, target=TARGET, logger=LOGGER) -> tuple[O.OPEData, np.ndarray]:
    """Context-free slates, per-position i.i.d. draws; returns data + actions."""
    rng = np.random.default_rng(seed)
    a = rng.choice(M, size=(n, K), p=logger)
    r = (rng.random((n, K)) < EXAM[None, :] * REL[a]).astype(float)
    return O.OPEData(r, logger[a], target[a]), a


def _with_model(data: O.OPEData, a: np.ndarray, q: np.ndarray, target=TARGET) -> O.OPEData:
    """Attach a reward model ``q (K, M)``."""
    return O.OPEData(data.rewards, data.propensities, data.target_probs, q[np.arange(K)[None, :], a],
                     np.broadcast_to((q * target[None, :]).sum(axis=1), a.shape))


def test_ips_unbiased_over_seeds():
    vals = np.array([O.ips(_problem(s, 500)[0]) for s in range(300)])
    se = vals.std() / np.sqrt(len(vals))
    assert abs(vals.mean() - TRUE_VALUE) < 3 * se + 1e-3, (vals.mean(), TRUE_VALUE, se)


def test_snips_and_dr_consistent():
    data, a = _problem(0, 200_000)
    assert abs(O.snips(data) - TRUE_VALUE) < 0.01
    bad_q = np.full((K, M), 0.2)
    assert abs(O.dr(_with_model(data, a, bad_q)) - TRUE_VALUE) < 0.01
    assert abs(O.sndr(_with_model(data, a, bad_q)) - TRUE_VALUE) < 0.01


def test_dr_exact_with_exact_reward_model():
    """With q = the true mean reward, DR's correction has mean zero and DM is exact;
    DR's error is far below IPS's on the same small sample."""
    exact = EXAM[:, None] * REL[None, :]
    errs_dr, errs_ips = [], []
    for s in range(30):
        data, a = _problem(s, 300)
        d = _with_model(data, a, exact)
        assert O.dm(d) == pytest.approx(TRUE_VALUE, abs=1e-12)
        errs_dr.append(O.dr(d) - TRUE_VALUE)
        errs_ips.append(O.ips(data) - TRUE_VALUE)
    assert np.sqrt(np.mean(np.square(errs_dr))) < 0.7 * np.sqrt(np.mean(np.square(errs_ips)))


def test_switch_dr_extremes():
    data, a = _problem(1, 3000)
    d = _with_model(data, a, np.full((K, M), 0.25))
    assert O.switch_dr(d, np.inf) == pytest.approx(O.dr(d))
    assert O.switch_dr(d, 0.0) == pytest.approx(O.dm(d))
    mid = O.switch_dr(d, 2.0)
    assert mid != pytest.approx(O.dr(d)) and mid != pytest.approx(O.dm(d))


def test_clipping_biases_downwards():
    """Clipping weights (rewards >= 0) can only lower IPS; on average it underestimates."""
    vals, clipped = [], []
    for s in range(100):
        data, _ = _problem(s, 1000)
        vals.append(O.ips(data))
        clipped.append(O.ips(data, clip=2.0))
        assert clipped[-1] <= vals[-1] + 1e-12
    assert np.mean(clipped) < TRUE_VALUE - 0.05 < np.mean(vals)


def test_bootstrap_coverage_sane():
    hits = []
    for s in range(60):
        data, _ = _problem(100 + s, 800)
        lo, hi = O.bootstrap(data, n_bootstrap=200, seed=s)["IPS"]
        hits.append(lo <= TRUE_VALUE <= hi)
    assert 0.83 <= np.mean(hits) <= 1.0, np.mean(hits)


def test_bootstrap_resamples_requests_not_rows():
    """Perfectly correlated positions: a request-level bootstrap gives a wider interval
    than the row-level one would (sqrt(K) narrower when rows were independent)."""
    rng = np.random.default_rng(0)
    n = 4000
    r = np.repeat(rng.random((n, 1)) < 0.3, K, axis=1).astype(float)
    d = O.OPEData(r, np.full((n, K), 0.5), np.full((n, K), 0.5))
    lo, hi = O.bootstrap(d, n_bootstrap=400)["IPS"]
    sd_request = np.sqrt(0.3 * 0.7 / n) * K  # the sum of K identical positions
    assert (hi - lo) / (2 * 1.96) == pytest.approx(sd_request, rel=0.15)


def test_support_warning():
    data, a = _problem(2, 2000)
    no_support_target = np.array([0.0, 0.0, 0.0, 0.0, 0.5, 0.5])
    unsupported = (np.broadcast_to(np.array([0, 0, 0, 0, 0, 1.0]), (K, M)) * no_support_target).sum(axis=1)
    d_bad = O.OPEData(data.rewards, data.propensities, no_support_target[a],
                      unsupported=np.broadcast_to(unsupported, a.shape))
    assert any("poor support" in w for w in O.diagnose(d_bad).warnings)
    d_ok = O.OPEData(data.rewards, data.propensities, data.target_probs, unsupported=np.zeros(a.shape))
    assert not any("poor support" in w for w in O.diagnose(d_ok).warnings)


def test_policy_terms_and_diagnostics():
    p = np.zeros((2, K, M))
    p[:, 0, 4] = 1.0
    p[:, 1, 5] = 1.0
    q = np.broadcast_to(np.arange(M) / 10.0, (2, K, M))
    mask = np.zeros((2, M), dtype=bool)
    mask[:, 5] = True
    t, qt, un = O.policy_terms(p, np.array([[4, 4], [1, 5]]), q, mask)
    assert t.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert qt.tolist() == [[0.4, 0.5], [0.4, 0.5]]
    assert un.tolist() == [[0.0, 1.0], [0.0, 1.0]]
    d = O.diagnose(O.OPEData(np.ones((2, K)), np.full((2, K), 0.5), t))
    assert d.max_weight == 2.0 and d.mean_weight == 1.0


def test_ctr_reward_model_and_crossfit_recover_truth():
    """Cross-fitted DR on a contextual problem; the reward model ranks actions right."""
    rng = np.random.default_rng(0)
    n_users, n = 50, 20000
    users = rng.integers(1, n_users, n)
    a = rng.choice(M, size=(n, K), p=LOGGER)
    r = (rng.random((n, K)) < EXAM[None, :] * REL[a]).astype(float)
    d = crossfit_ope_data(users, a, r, LOGGER[a], lambda u: np.broadcast_to(TARGET, (len(u), M)), n_users, M,
                          n_folds=3)
    assert abs(O.dr(d) - TRUE_VALUE) < 0.03
    assert abs(O.dm(d) - TRUE_VALUE) < 0.05
    mdl = CTRRewardModel(n_users, M, K).fit(np.repeat(users, K), a.ravel(), np.tile(np.arange(K), n), r.ravel())
    pred = mdl.predict(np.array([1]))[0]  # (K, M)
    assert np.all(np.diff(pred[0, 1:]) > 0) and np.all(pred[0, 1:] > pred[1, 1:])


def test_tv_and_kl():
    assert O.total_variation(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])) == 1.0
    assert O.kl_divergence(np.array([[0.5, 0.5]]), np.array([[0.5, 0.5]])) == pytest.approx(0.0)


def test_per_request_terms_equal_per_context_terms_for_a_per_context_policy():
    """``CrossFit.ope_data_requests`` (a distribution per log row, as a replayed stateful
    service gives) reduces to ``ope_data`` when every row of a context gets the same
    distribution, and follows the row when they differ."""
    from recsys.evaluation.ope_reward import CrossFit

    rng = np.random.default_rng(3)
    n, k, m, n_users = 600, 3, 12, 40
    users = rng.integers(1, n_users + 1, n)
    a = np.stack([rng.choice(np.arange(1, m), k, replace=False) for _ in range(n)])
    r = (rng.random((n, k)) < 0.2).astype(float)
    p = np.full((n, k), 1.0 / (m - 1))
    per_user = rng.dirichlet(np.ones(m - 1), size=(n_users + 1, k))
    per_user = np.concatenate([np.zeros((n_users + 1, k, 1)), per_user], axis=2)  # column 0: padding
    cf = CrossFit(users, a, r, p, n_users + 1, m, n_folds=3, seed=0)
    by_ctx = cf.ope_data(lambda u: per_user[u])
    by_row = cf.ope_data_requests(lambda rows: per_user[users[rows]], block=97)
    np.testing.assert_allclose(by_row.target_probs, by_ctx.target_probs)
    np.testing.assert_allclose(by_row.q_target, by_ctx.q_target)
    # a row-specific policy: the logged slate itself -> target 1 at every logged position
    logged = np.zeros((n, k, m))
    logged[np.arange(n)[:, None], np.arange(k)[None, :], a] = 1.0
    own = cf.ope_data_requests(lambda rows: logged[rows])
    assert np.all(own.target_probs == 1.0)
    assert not np.allclose(own.target_probs, by_ctx.target_probs)
