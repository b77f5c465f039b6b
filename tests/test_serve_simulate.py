"""`recsys serve simulate` against a real decision service over loopback: the
reported true value is the world's exact expected clicks of the slates that were
served (recomputed here from the decision log), every drawn click reaches the
feedback log; and a bundle set as an OPE policy reproduces the service's slates."""
from __future__ import annotations

import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys.bench.simulate import serve_overrides, simulate_traffic
from recsys.data.synthetic import SyntheticConfig, generate_world
from recsys.service.app import create_app
from recsys.service.config import serve_config
from recsys.service.decision_log import DECISION_SCHEMA, FEEDBACK_SCHEMA, read_log
from recsys.utils.errors import RecsysError
from tests.service_helpers import build_bundles, served_log_setup, serving


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return build_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="module")
def world():  # the world tests.helpers.ranker_run(seed=3) trains the bundles' ranker on: users 1..120, items 1..80
    return generate_world(SyntheticConfig(n_users=120, n_items=80, n_categories=4, n_requests=2000, seed=3))


def _serve(paths, tmp_path, **over):
    return {"bundles": {k: str(paths[k]) for k in ("index", "ranker", "catalogue", "users")},
            "caps": {"user_item": None}, "diversity": {"method": "none"},
            "decision_log": {"directory": str(tmp_path / "log"), "flush_interval_s": 0.2}, **over}


def test_simulate_reports_the_true_value_of_the_served_slates_and_posts_every_click(paths, world, tmp_path):
    app = create_app(serve_config(_serve(paths, tmp_path, exploration={
        "default": {"policy": "softmax", "temperature": 0.05, "pool": 20}})))
    with serving(app) as url:
        res = simulate_traffic(url, world, 300, seed=1, out_dir=tmp_path)
    time.sleep(0.1)
    dec = read_log(tmp_path / "log", "decisions", DECISION_SCHEMA)
    fb = read_log(tmp_path / "log", "feedback", FEEDBACK_SCHEMA)
    a = res["arms"]["default"]
    assert a["requests"] == 300 and a["levels"] == {"personalised": 300}
    # the true value, recomputed from what the decision log says was served
    u = np.array(dec.column("user_id").to_pylist(), dtype=np.int64)
    i = np.array(dec.column("item_id").to_pylist(), dtype=np.int64)
    pos = np.array(dec.column("position").to_pylist(), dtype=np.int64)
    p = world.click_probability(u, i, pos)
    n_req = len(set(dec.column("request_id").to_pylist()))
    assert n_req == 300
    assert a["true_value"]["mean"] == pytest.approx(p.sum() / n_req, rel=1e-9)
    assert a["true_value"]["ci_low"] < a["true_value"]["mean"] < a["true_value"]["ci_high"]
    # every sampled click was posted as feedback, and the sampled rate agrees with the truth
    assert fb.num_rows == res["clicks_posted"] == round(a["clicks_per_slate"]["mean"] * 300)
    assert abs(a["clicks_per_slate"]["mean"] - a["true_value"]["mean"]) < 4 * np.sqrt(a["true_value"]["mean"] / 300)
    ex = pq.read_table(res["exposures"])
    assert set(ex.column_names) >= {"user_id", "arm", "true_value", "clicks", "pre_clicks", "timestamp"}
    assert ex.num_rows == a["users"]


def test_simulate_refuses_a_service_that_serves_items_outside_the_world(paths, tmp_path):
    small = generate_world(SyntheticConfig(n_users=120, n_items=40, n_categories=4, n_requests=200, seed=3))
    app = create_app(serve_config(_serve(paths, tmp_path)))
    with serving(app) as url:
        with pytest.raises(RecsysError, match=r"not an item of the synthetic world \(ids 1..40\)"):
            simulate_traffic(url, small, 50, seed=0)
        with pytest.raises(RecsysError, match="k=9: expected 1..5"):
            simulate_traffic(url, small, 5, k=9)


def test_serve_block_becomes_hydra_overrides_the_serve_command_accepts(paths, tmp_path):
    from tests.helpers import run

    serve = _serve(paths, tmp_path, exploration={"default": {"policy": "softmax", "temperature": 0.05}},
                   experiment={"name": "x", "arms": {"champion": {"weight": 1},
                                                     "ann-only": {"weight": 2, "bundles": {"ranker": None}}}})
    res = run("serve", "dry_run=true", *serve_overrides(serve), f"hydra.run.dir={tmp_path / 'dry'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    cfg = (tmp_path / "dry" / ".hydra" / "config.yaml").read_text()
    assert "ann-only" in cfg and "softmax" in cfg and str(paths["ranker"]) in cfg


def test_bundle_policy_reproduces_the_services_slates(paths, world, tmp_path):
    from recsys.ope.served_policies import bundle_policy

    serve = _serve(paths, tmp_path)
    s, _ = served_log_setup(serve, world, 60, 2, tmp_path, paths["catalogue"])
    pol = bundle_policy(s, 0, serve=serve, mode="topk")
    # the replica answers the logged requests in order from the same state: a user with one request gets
    # exactly the slate the service served
    served = pq.read_table(tmp_path / "ope_log.parquet").to_pylist()
    by_user: dict[str, dict[str, list]] = {}
    for r in served:
        by_user.setdefault(r["user_id"], {}).setdefault(r["request_id"], []).append(r)
    users = np.unique(s.log.users)
    p = pol.probs(users)
    assert np.allclose(p.sum(axis=2), 1.0)
    n_single = 0
    for b, u in enumerate(users.tolist()):
        reqs = by_user[str(s.log.user_ids[u])]
        if len(reqs) == 1:
            rows = sorted(next(iter(reqs.values())), key=lambda r: r["position"])
            assert [str(s.log.item_ids[j]) for j in p[b].argmax(axis=1)] == [r["item_id"] for r in rows]
            assert np.allclose(p[b].max(axis=1), 1.0)
            n_single += 1
    assert n_single >= 20
    soft = bundle_policy(s, 0, serve=serve, mode="softmax", temperature=0.05, pool=20).probs(users[:4])
    assert np.allclose(soft.sum(axis=2), 1.0, atol=1e-6) and ((soft > 1e-9).sum(axis=2) > 1).all()
    with pytest.raises(RecsysError, match="serving config not found"):
        bundle_policy(s, 0, serve=str(tmp_path / "nope.yaml"))


def test_log_replay_with_clicks_reproduces_every_served_slate(paths, world, tmp_path):
    """The service gets its clicks as /v1/events (counters, recent items move between
    requests): the replica replaying the log's slates and clicks answers every request as
    the service did; without the clicks it does not."""
    from recsys.ope.served_policies import bundle_policy

    serve = _serve(paths, tmp_path)
    s, out = served_log_setup(serve, world, 80, 3, tmp_path, paths["catalogue"], post_events=True)
    assert out["overall"]["clicks_per_slate"]["mean"] > 0
    users = np.unique(s.log.users)
    # what the service served, per user: the mean over the user's requests of the one-hot slates
    want = np.zeros((len(users), s.slate_size, s.n_actions))
    row = {u: b for b, u in enumerate(users.tolist())}
    n = np.zeros(len(users))
    for r, u in enumerate(s.log.users.tolist()):
        want[row[u], np.arange(s.slate_size), s.log.actions[r]] += 1
        n[row[u]] += 1
    want /= n[:, None, None]
    assert (n > 1).sum() >= 5  # users whose later requests follow their own clicks
    replay = bundle_policy(s, 0, serve=serve, mode="topk", state="log", log_clicks=True)
    np.testing.assert_allclose(replay.probs(users), want, atol=1e-9)
    assert replay.info["state"] == "log" and replay.info["log_clicks"] is True
    blind = bundle_policy(s, 0, serve=serve, mode="topk", state="log", log_clicks=False).probs(users)
    assert not np.allclose(blind, want, atol=1e-9)  # the clicks moved the state the service answered from
    with pytest.raises(RecsysError, match=r"policy.state='x': expected log"):
        bundle_policy(s, 0, serve=serve, state="x")
    with pytest.raises(RecsysError, match=r"policy.log_clicks=true needs policy.state=log"):
        bundle_policy(s, 0, serve=serve, state="own", log_clicks=True)


def test_mixture_logger_replica_gives_the_logged_propensities_and_supports_each_challenger(paths, world, tmp_path):
    """A service exploring toward two challengers (``exploration.mixture``): the OPE
    replica of that exploring service (``mode=served``, the log's state) gives, request
    by request, exactly the propensity the service logged for every shown item; each
    challenger's greedy replica slate has logging probability >= share / 2 at every
    position (its importance weights are bounded by 2 / share)."""
    from recsys.ope.served_policies import bundle_policy

    challengers = {"ann_only": {"ranker": None}, "static": {"index": None, "ranker": None}}
    share = 0.4
    serve = _serve(paths, tmp_path, exploration={"default": {
        "policy": "softmax", "temperature": 0.05, "pool": 20, "mixture": challengers, "mixture_share": share}})
    s, _ = served_log_setup(serve, world, 80, 5, tmp_path, paths["catalogue"])
    log = s.log
    rows = np.arange(len(log.users))
    assert set(pq.read_table(tmp_path / "ope_log.parquet").column("logging_policy").to_pylist()) == {
        f"recsys.service/personalised/mixture(share={share:g},candidates=2)+softmax(T=0.05,pool=20)"}
    mu = bundle_policy(s, 0, serve=serve, mode="served", state="log").request_probs(rows)
    np.testing.assert_allclose(mu.sum(axis=2), 1.0, atol=1e-6)
    at_logged = np.take_along_axis(mu, log.actions[:, :, None], axis=2)[..., 0]
    np.testing.assert_allclose(at_logged, log.propensities, rtol=1e-6, atol=1e-9)
    for name, b in challengers.items():
        target = bundle_policy(s, 0, serve={**serve, "bundles": {**serve["bundles"], **b}}, mode="topk",
                               state="log").request_probs(rows)
        assert np.allclose(target.max(axis=2), 1.0)  # greedy
        mass = (target * mu).sum(axis=2)  # the logger's probability of the challenger's item at each position
        assert mass.min() >= share / 2 - 1e-9, name
