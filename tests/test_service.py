"""The decision service (recsys.service) on tiny real bundles: the recommend
pipeline, filters, consent, caps, fallbacks, reload, decision log, logs join."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import warnings

from recsys.service.app import create_app
from recsys.service.config import serve_config
from recsys.service.decision_log import DECISION_SCHEMA, read_log
from recsys.service.state import InProcessState
from tests.helpers import ROOT
from tests.service_helpers import build_bundles, config, serving

with warnings.catch_warnings():  # starlette 1.x prefers httpx2 for its TestClient; httpx works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "t0ken-for-tests"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return build_bundles(tmp_path_factory.mktemp("bundles"))


def client(app):
    return TestClient(app, client=("127.0.0.1", 5000))


def rec(c, user="3", k=5, channel="home", **kw):
    r = c.post("/v1/recommend", json={"user_id": user, "channel": channel, "k": k, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_recommend_returns_k_items_with_decision_id_and_level(paths, tmp_path):
    app = create_app(serve_config(config(paths, tmp_path)))
    with client(app) as c:
        out = rec(c, k=5)
        assert len(out["items"]) == 5 and len(set(out["items"])) == 5
        assert out["level"] == "personalised" and len(out["decision_id"]) == 32
        assert out["versions"]["feature_set_version"] == "ranker_features/1"
        assert out["versions"]["embedding_version"].startswith("DCNv2/")
        assert all(0 < s < 1 for s in out["scores"])  # P(click) from the ranker
        spec = c.get("/openapi.json").json()
        assert {"/v1/recommend", "/v1/events", "/v1/feedback", "/v1/admin/reload"} <= set(spec["paths"])


def test_exclusions_blocked_and_unavailable_items_never_appear(paths, tmp_path):
    app = create_app(serve_config(config(paths, tmp_path, diversity={"method": "category_caps",
                                                                     "max_per_category": 2})))
    with client(app) as c:
        for u in range(1, 30):
            exclude = [str(i) for i in range(u, u + 10)]
            out = rec(c, user=str(u), k=8, exclude=exclude)
            assert not set(out["items"]) & (set(exclude) | {"7", "80"})
            cats = [int(i) % 4 for i in out["items"]]
            assert max(cats.count(x) for x in set(cats)) <= 2
        # a user's recent items (events) are filtered as seen
        c.post("/v1/events", json={"events": [{"user_id": "5", "item_id": i, "event_type": "view", "channel": "home"}
                                              for i in ("11", "12", "13")]})
        for _ in range(3):
            assert not {"11", "12", "13"} & set(rec(c, user="5", k=8)["items"])


class Recording(InProcessState):
    """InProcessState that records which user every call touched."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __getattribute__(self, name):
        attr = super().__getattribute__(name)
        if name in ("recent_items", "add_event", "counters", "reserve", "get_consent", "set_consent", "forget_user"):
            def wrapped(*a, **kw):
                self.calls.append((name, a[0] if a else None))
                return attr(*a, **kw)
            return wrapped
        return attr


def test_opted_out_user_non_personalised_no_state_no_raw_id(paths, tmp_path):
    state = Recording()
    app = create_app(serve_config(config(paths, tmp_path)), state=state)
    with client(app) as c:
        c.post("/v1/events", json={"events": [{"user_id": "9", "item_id": str(i), "event_type": "click",
                                               "channel": "home"} for i in range(20, 30)]})
        assert c.put("/v1/users/42/consent", json={"granted": False}).status_code == 200
        state.calls.clear()
        ev = c.post("/v1/events", json={"events": [{"user_id": "42", "item_id": "3", "event_type": "click",
                                                    "channel": "home"}]}).json()
        assert ev == {"recorded": 0, "skipped": 1}
        outs = [rec(c, user="42", k=6) for _ in range(3)]
    for out in outs:
        assert out["level"] == "global_popularity" and len(out["items"]) == 6  # useful: popular items
        assert "no_consent" in out["reasons"]
    assert {name for name, _ in state.calls} == {"get_consent"}  # nothing behavioural read or written
    log = read_log(tmp_path / "log", "decisions", DECISION_SCHEMA)
    assert "42" not in log.column("user_id").to_pylist()
    assert all(u.startswith("anon:") for u in log.column("user_id").to_pylist())


def test_frequency_caps_never_exceeded_in_process(paths, tmp_path):
    caps = {"user_item": {"limit": 1, "window_s": 60}, "user_channel": {"limit": 12, "window_s": 60},
            "user": {"limit": 15, "window_s": 60}}
    app = create_app(serve_config(config(paths, tmp_path, caps=caps)))
    with client(app) as c:
        shown = [rec(c, user="4", k=5, channel="home")["items"] for _ in range(4)]
        flat = [i for s in shown for i in s]
        assert len(flat) == 12 and len(set(flat)) == 12  # user x item 1, user x channel 12
        other = [rec(c, user="4", k=5, channel="email")["items"] for _ in range(2)]
        assert sum(map(len, other)) == 3  # the per-user cap (15) across channels
        metrics = c.get("/metrics").text
    assert 'recsys_cap_hits_total{channel="home"}' in metrics


def test_missing_index_falls_back_and_is_counted(paths, tmp_path):
    cfg = config(paths, tmp_path)
    cfg["bundles"] = {"catalogue": str(paths["catalogue"])}
    app = create_app(serve_config(cfg))
    with client(app) as c:
        out = rec(c, k=4)
        assert out["level"] == "static" and out["items"] == ["1", "2", "3", "4"]
        assert any("missing_bundle" in r for r in out["reasons"])
        c.post("/v1/events", json={"events": [{"user_id": "1", "item_id": "33", "event_type": "purchase",
                                               "channel": "home", "segment": "nl"}]})
        assert rec(c, k=4, context={"segment": "nl"})["level"] == "segment_popularity"
        assert rec(c, user="2", k=4)["level"] == "global_popularity"
        m = c.get("/metrics").text
    assert 'recsys_decisions_total{channel="home",level="static"} 1.0' in m
    assert 'recsys_decisions_total{channel="home",level="segment_popularity"} 1.0' in m


def test_ranker_error_timeout_and_circuit_breaker_fall_back(paths, tmp_path):
    cfg = config(paths, tmp_path, budgets={"rank_ms": 100}, breaker={"failures": 3, "cooldown_s": 60})
    app = create_app(serve_config(cfg))
    ranker = app.state.holder.current.ranker
    with client(app) as c:
        ranker.predict_proba = lambda feats: (_ for _ in ()).throw(RuntimeError("onnx session died"))
        out = rec(c, k=5)
        assert out["level"] == "static" and len(out["items"]) == 5
        assert any("ranker:error" in r for r in out["reasons"])
        ranker.predict_proba = lambda feats: (time.sleep(0.5), np.full(len(feats["item"]), 0.5))[1]
        t = time.perf_counter()
        out = rec(c, k=5)
        assert time.perf_counter() - t < 0.45  # the budget cut the stage off
        assert out["level"] == "static" and any("ranker:timeout" in r for r in out["reasons"])
        rec(c, k=5)  # third failure opens the circuit
        out = rec(c, k=5)
        assert any("circuit_open" in r for r in out["reasons"])
        assert 'recsys_stage_errors_total{kind="timeout",stage="ranker"}' in c.get("/metrics").text


def test_reload_refuses_corrupt_or_mismatched_sets_and_old_set_serves(paths, tmp_path, monkeypatch):
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", TOKEN)
    app = create_app(serve_config(config(paths, tmp_path)))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    corrupt = tmp_path / "corrupt"
    shutil.copytree(paths["ranker"], corrupt)
    model = corrupt / "ranker.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with client(app) as c:
        before = rec(c)["versions"]
        r = c.post("/v1/admin/reload", json={"bundles": {"ranker": str(corrupt)}}, headers=auth)
        assert r.status_code == 409 and "sha256" in r.json()["detail"]
        r = c.post("/v1/admin/reload", json={"bundles": {"ranker": str(paths["ranker_other"])}}, headers=auth)
        assert r.status_code == 409 and "embedding_version" in r.json()["detail"]
        after = rec(c)
        assert after["versions"] == before and after["level"] == "personalised"
        assert c.post("/v1/admin/reload", headers={"Authorization": "Bearer nope"}).status_code == 401
        ok = c.post("/v1/admin/reload", headers=auth)
        assert ok.status_code == 200 and ok.json()["versions"] == before
    with TestClient(app, client=("10.0.0.5", 5000)) as remote:
        assert remote.post("/v1/admin/reload", headers=auth).status_code == 403


def test_bad_requests_are_4xx_and_unknown_users_cold_start(paths, tmp_path):
    app = create_app(serve_config(config(paths, tmp_path, max_k=20, max_body_bytes=2000)))
    with client(app) as c:
        for body in ({"user_id": "1", "channel": "home", "k": 0}, {"user_id": "1", "channel": "home", "k": 21},
                     {"user_id": "", "channel": "home", "k": 3}, {"user_id": "1", "channel": "h me", "k": 3},
                     {"user_id": "1", "channel": "home", "k": "many"}, {"channel": "home", "k": 3}):
            assert c.post("/v1/recommend", json=body).status_code == 422, body
        big = {"user_id": "1", "channel": "home", "k": 3, "exclude": ["x" * 50] * 100}
        assert c.post("/v1/recommend", json=big).status_code == 413
        assert c.post("/v1/feedback", json={"decision_id": "nothex", "item_id": "1", "event": "click"}
                      ).status_code == 422
        out = rec(c, user="stranger-1", k=3)
        assert out["level"] != "personalised" and len(out["items"]) == 3
        assert any("cold_start" in r for r in out["reasons"])
        assert c.get("/healthz").json() == {"status": "ok"} and c.get("/readyz").json()["ranker"]


def test_decision_log_rows_match_responses_and_logs_join_reads_as_ope_log(paths, tmp_path):
    from recsys.data.bandit_logs import read_bandit_log
    from recsys.service.join import join_logs

    app = create_app(serve_config(config(paths, tmp_path)))
    ok = 0
    clicked = []
    with serving(app) as url, httpx.Client(base_url=url) as c:
        for u in range(1, 41):
            r = c.post("/v1/recommend", json={"user_id": str(u), "channel": "home", "k": 4})
            ok += r.status_code == 200
            d = r.json()
            if u % 4 == 0:
                clicked.append((d["decision_id"], d["items"][1]))
                assert c.post("/v1/feedback", json={"decision_id": d["decision_id"], "item_id": d["items"][1],
                                                    "event": "click"}).status_code == 202
    # the server has shut down: every buffered row is on disk
    log = read_log(tmp_path / "log", "decisions", DECISION_SCHEMA)
    assert ok == 40 and len(set(log.column("request_id").to_pylist())) == 40 and log.num_rows == 160
    assert json.loads(log.column("request")[0].as_py()) == {"context": {}, "exclude": []}
    lat = json.loads(log.column("latency_ms")[0].as_py())
    assert {"state", "index", "ranker", "total"} <= set(lat)
    summary = join_logs(tmp_path / "log", tmp_path / "ope.parquet", window_s=600)
    assert summary["requests"] == 40 and summary["clicks"] == 10
    bl = read_bandit_log(tmp_path / "ope.parquet")
    assert bl.actions.shape == (40, 4) and bl.rewards.sum() == 10 and (bl.propensities == 1.0).all()
    assert (bl.rewards[:, 1].sum(), bl.rewards[:, [0, 2, 3]].sum()) == (10, 0)


def test_log_parts_survive_kill_9(tmp_path):
    code = ("import os, signal, time\n"
            "from recsys.service.decision_log import PartWriter, FEEDBACK_SCHEMA\n"
            f"w = PartWriter({str(tmp_path)!r}, FEEDBACK_SCHEMA, 'feedback', flush_interval_s=0.05)\n"
            "for i in range(200):\n"
            "    w.write([{'decision_id': 'a' * 32, 'item_id': str(i), 'event': 'click', 'timestamp': time.time()}])\n"
            "    time.sleep(0.002)\n"
            "time.sleep(0.3)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60)
    assert r.returncode == -9
    from recsys.service.decision_log import FEEDBACK_SCHEMA
    t = read_log(tmp_path, "feedback", FEEDBACK_SCHEMA)
    assert t.num_rows == 200 and len(list(tmp_path.glob("feedback-*.parquet"))) > 1


def test_service_imports_no_torch_hydra(paths):
    code = ("import sys\nimport recsys.service.app, recsys.service.join\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'pytorch_lightning', 'hydra',"
            " 'omegaconf')]\nassert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_config_errors_are_one_line():
    from recsys.service.config import ServiceConfigError

    for bad, match in (({"bundels": {}}, "serve.bundels"), ({"fallback": {"home": ["magic"]}}, "levels are"),
                       ({"caps": {"user": {"limit": 2}}}, "serve.caps.user"),
                       ({"decision_log": {"flush_interval_s": 5}}, "<= 1")):
        with pytest.raises(ServiceConfigError, match=match):
            serve_config(bad)


def test_cli_serve_sigterm_flushes_the_log_and_logs_join(paths, tmp_path):
    import signal

    from recsys.data.bandit_logs import read_bandit_log
    from tests.helpers import run
    from tests.service_helpers import free_port

    port = free_port()
    args = [sys.executable, "-m", "recsys", "serve", f"port={port}", f"serve.bundles.index={paths['index']}",
            f"serve.bundles.ranker={paths['ranker']}", f"serve.bundles.catalogue={paths['catalogue']}",
            f"serve.bundles.users={paths['users']}", f"hydra.run.dir={tmp_path / 'run'}", "log_level=warning"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ok, deadline = 0, time.time() + 60
        while time.time() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            for u in range(1, 21):
                r = c.post("/v1/recommend", json={"user_id": str(u), "channel": "app", "k": 3})
                ok += r.status_code == 200
                if u % 2:
                    d = r.json()
                    c.post("/v1/feedback", json={"decision_id": d["decision_id"], "item_id": d["items"][0],
                                                 "event": "click"})
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    # uvicorn shuts down gracefully (lifespan: logs flushed), then re-raises SIGTERM
    assert proc.returncode in (0, -signal.SIGTERM) and "Traceback" not in out, out
    log = read_log(tmp_path / "run" / "decision_log", "decisions", DECISION_SCHEMA)
    assert ok == 20 and len(set(log.column("request_id").to_pylist())) == 20
    r = run("logs", "join", f"logs={tmp_path / 'run' / 'decision_log'}", f"hydra.run.dir={tmp_path / 'join'}")
    assert r.returncode == 0, r.stderr
    assert "joined 20 decisions" in r.stdout and "10 click rewards" in r.stdout
    bl = read_bandit_log(tmp_path / "join" / "ope_log.parquet")
    assert bl.actions.shape == (20, 3) and bl.rewards.sum() == 10
    r = run("ope", f"logs={tmp_path / 'join' / 'ope_log.parquet'}", "policy=popularity",
            f"hydra.run.dir={tmp_path / 'ope'}")
    assert r.returncode == 0 and "IPS" in r.stdout, r.stderr


def test_mmr_trades_relevance_for_diversity():
    from recsys.service.rules import mmr_order

    items = ["a", "a2", "b"]  # a and a2 point the same way, b elsewhere
    vecs = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]])
    rel = np.array([1.0, 0.9, 0.5])
    assert mmr_order(items, rel, vecs, 3, lam=1.0) == ["a", "a2", "b"]
    assert mmr_order(items, rel, vecs, 3, lam=0.5) == ["a", "b", "a2"]


def test_cli_serve_refuses_workers_without_shared_state(paths, tmp_path):
    from tests.helpers import run

    r = run("serve", "workers=2", "dry_run=true", f"serve.bundles.catalogue={paths['catalogue']}",
            f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2 and "needs serve.state=redis" in r.stderr


def test_an_unexpected_error_in_a_level_is_a_fallback_not_a_5xx(paths, tmp_path):
    state = InProcessState()
    state.popular = lambda segment, n: {}["boom"]  # a bug in a level
    cfg = config(paths, tmp_path)
    cfg["bundles"] = {"catalogue": str(paths["catalogue"])}
    with client(create_app(serve_config(cfg), state=state)) as c:
        out = rec(c, k=3, context={"segment": "nl"})
    assert out["level"] == "static"
    assert any(r.startswith("global_popularity:state:error (KeyError") for r in out["reasons"])
    state.popular = lambda segment, n: None  # bad data from a backend breaks the filter step
    with client(create_app(serve_config(cfg), state=state)) as c:
        out = rec(c, k=3)
    assert out["level"] == "static" and "global_popularity:unexpected:TypeError" in out["reasons"]


def test_fallback_chain_is_per_channel(paths, tmp_path):
    cfg = config(paths, tmp_path, fallback={"default": ["personalised", "static"], "email": ["static"]})
    with client(create_app(serve_config(cfg))) as c:
        assert rec(c, channel="home")["level"] == "personalised"
        out = rec(c, channel="email", k=3)
        assert out["level"] == "static" and out["items"] == ["1", "2", "3"]


def test_sigterm_under_load_no_5xx_and_every_answered_decision_logged(paths, tmp_path):
    import signal
    import threading

    from tests.service_helpers import free_port

    port = free_port()
    args = [sys.executable, "-m", "recsys", "serve", f"port={port}", f"serve.bundles.index={paths['index']}",
            f"serve.bundles.ranker={paths['ranker']}", f"serve.bundles.catalogue={paths['catalogue']}",
            f"serve.bundles.users={paths['users']}", f"hydra.run.dir={tmp_path / 'run'}", "log_level=warning"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.2)
    answered, statuses, stop = [], [], threading.Event()
    lock = threading.Lock()

    def load(i: int) -> None:
        with httpx.Client(base_url=url, timeout=5) as c:
            while not stop.is_set():
                try:
                    r = c.post("/v1/recommend", json={"user_id": str(i), "channel": "home", "k": 3})
                except httpx.TransportError:
                    return  # the server has closed: fine, nothing was answered
                with lock:
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        answered.append(r.json()["decision_id"])
    threads = [threading.Thread(target=load, args=(i,)) for i in range(1, 5)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    stop.set()
    for t in threads:
        t.join()
    assert proc.returncode in (0, -signal.SIGTERM) and "Traceback" not in out, out
    assert len(answered) > 20 and set(statuses) == {200}, sorted(set(statuses))
    logged = set(read_log(tmp_path / "run" / "decision_log", "decisions", DECISION_SCHEMA)
                 .column("request_id").to_pylist())
    assert set(answered) <= logged


def test_served_ctr_features_equal_the_offline_definition(paths, tmp_path):
    """The ranker's CTR / impression features at serving time equal
    recsys.features.ranker.prior_counts + smoothed_ctr computed offline on the
    decision log with its clicks (impressions and clicks of strictly earlier requests)."""
    from recsys.features.ranker import prior_counts, smoothed_ctr
    from recsys.service.join import join_logs

    app = create_app(serve_config(config(paths, tmp_path, diversity={"method": "none"})))
    ranker = app.state.holder.current.ranker
    seen = []
    real = ranker.predict_proba
    ranker.predict_proba = lambda f: (seen.append(f), real(f))[1]
    with client(app) as c:
        for step in range(24):
            user = str(step % 3 + 1)
            out = rec(c, user=user, k=4)
            for item in out["items"][: step % 3]:  # click some of what was shown
                c.post("/v1/events", json={"events": [{"user_id": user, "item_id": item, "event_type": "click",
                                                       "channel": "home"}]})
                c.post("/v1/feedback", json={"decision_id": out["decision_id"], "item_id": item, "event": "click"})
        seen.clear()
        last = rec(c, user="2", k=4)["decision_id"]
    feats = seen[-1]
    app.state.decision_log.flush(), app.state.feedback_log.flush()
    join_logs(tmp_path / "log", tmp_path / "j.parquet", window_s=600)
    import pyarrow.parquet as pq

    log = pq.read_table(tmp_path / "j.parquet").sort_by("timestamp")
    log = log.filter(np.array([r != last for r in log.column("request_id").to_pylist()]))  # the probed request
    req_of = {r: i for i, r in enumerate(dict.fromkeys(log.column("request_id").to_pylist()))}
    users = np.array([int(u) for u in log.column("user_id").to_pylist()] + [2] * len(feats["item"]))
    items = np.array([int(i) for i in log.column("item_id").to_pylist()] + feats["item"].tolist())
    request = np.array([req_of[r] for r in log.column("request_id").to_pylist()] + [len(req_of)] * len(feats["item"]))
    click = np.array(log.column("click").to_pylist() + [0] * len(feats["item"]))
    new = slice(log.num_rows, None)
    uc, ui = prior_counts(users, request, click)
    ic, ii = prior_counts(items, request, click)
    assert ui[new][0] > 0 and ic[new].sum() > 0  # the check is not vacuous
    np.testing.assert_allclose(feats["user_ctr"], smoothed_ctr(uc[new], ui[new]), rtol=1e-6)
    np.testing.assert_allclose(feats["user_log_imps"], np.log1p(ui[new]), rtol=1e-6)
    np.testing.assert_allclose(feats["item_ctr"], smoothed_ctr(ic[new], ii[new]), rtol=1e-6)
    np.testing.assert_allclose(feats["item_log_imps"], np.log1p(ii[new]), rtol=1e-6)


def test_consent_list_applied_at_start_revokes_and_keeps_api_choices(paths, tmp_path):
    import polars as pl

    events = tmp_path / "events.parquet"
    pl.DataFrame({"user_id": ["42"] * 5 + ["9"] * 5, "item_id": [str(i) for i in range(20, 30)],
                  "timestamp": [float(t) for t in range(10)], "event_type": ["click"] * 10}).write_parquet(events)
    consent = tmp_path / "consent.csv"
    consent.write_text("user_id,granted\n42,false\n9,true\n13,true\n")
    state = Recording()
    state.set_consent("13", False)  # chosen through the API before this start: kept
    cfg = config(paths, tmp_path, consent_list=str(consent))
    cfg["bundles"] = {**cfg["bundles"], "events": str(events)}
    app = create_app(serve_config(cfg), state=state)
    assert state.get_consent("42") is False and state.get_consent("9") is True and state.get_consent("13") is False
    assert state.recent_items("42", 10) == [] and len(state.recent_items("9", 10)) == 5  # the revoked user not warmed
    with client(app) as c:
        out = rec(c, user="42", k=6)
        assert out["level"] != "personalised" and "no_consent" in out["reasons"]
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,granted\n42,maybe\n")
    from recsys.service.bundles import BundleSetError

    with pytest.raises(BundleSetError, match=r"bad.csv.*row 0: granted='maybe'"):
        create_app(serve_config(config(paths, tmp_path, consent_list=str(bad))))


def test_exposure_reranker_evens_category_exposure_at_a_measured_relevance_cost(paths, tmp_path):
    """serve.exposure: the same requests with the re-ranker off and on; the categories'
    exposure shares move toward equal (max share and Gini fall) while the slates'
    mean predicted P(click) drops by a measured amount."""
    def run_(weight: float) -> tuple[dict[str, float], float, dict[str, float]]:
        cfg = config(paths, tmp_path / f"w{weight}", caps={"user_item": None}, diversity={"method": "none"},
                     exposure={"weight": weight})
        app = create_app(serve_config(cfg))
        shown: dict[str, float] = {}
        rel = []
        with client(app) as c:
            for u in range(1, 121):
                out = rec(c, user=str(u), k=5)
                assert out["level"] == "personalised"
                for pos, item in enumerate(out["items"]):
                    cat = str(int(item) % 4)  # the test catalogue's categories
                    shown[cat] = shown.get(cat, 0.0) + 1.0 / np.log2(pos + 2)
                rel.append(np.mean(out["scores"]))
            state = app.state.pipeline.exposure_state("home")
        total = sum(shown.values())
        return {k: v / total for k, v in shown.items()}, float(np.mean(rel)), state

    def gini(shares: dict[str, float]) -> float:
        x = np.sort(np.array([shares.get(str(c), 0.0) for c in range(4)]))
        n = len(x)
        return float((2 * np.arange(1, n + 1) - n - 1).dot(x) / (n * x.sum()))

    off, rel_off, state_off = run_(0.0)
    on, rel_on, state_on = run_(5.0)
    assert state_off == {} and sum(state_on.values()) > 0  # the running exposure is kept only when re-ranking
    assert max(on.values()) < max(off.values()) and gini(on) < 0.8 * gini(off), (off, on)
    assert rel_on <= rel_off  # the cost, in the ranker's predicted relevance
    print(f"category exposure Gini {gini(off):.3f} -> {gini(on):.3f}, max share {max(off.values()):.3f} -> "
          f"{max(on.values()):.3f}; mean predicted P(click) {rel_off:.4f} -> {rel_on:.4f} "
          f"({(rel_on - rel_off) / rel_off:+.1%})")
    with pytest.raises(Exception, match="serve.exposure"):
        serve_config(config(paths, tmp_path, exposure={"weight": -1.0}))
