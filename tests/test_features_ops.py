"""Online store persistence, identity resolution, drift, skew and erasure."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from recsys.features import batch
from recsys.features.definitions import build_feature_set
from recsys.features.events import scan_events
from recsys.features.online import OnlineFeatures
from tests.helpers import run
from tests.test_features_equality import CFG, random_events


def test_online_state_snapshot_and_restore(tmp_path):
    fs = build_feature_set(CFG)
    ev = random_events(np.random.default_rng(5), 300).sort("timestamp")
    params = batch.fit(scan_events(ev), fs, float(ev["timestamp"].median()))
    a = OnlineFeatures(fs, params)
    a.update(ev[:150])
    a.save(tmp_path / "state")
    b = OnlineFeatures.load(tmp_path / "state", fs)
    a.update(ev[150:])
    b.update(ev[150:])
    q = float(ev["timestamp"].max()) + 5.0
    for entity, keys in (("user", ["u0", "u3"]), ("user_item", [("u1", "i2")]), ("item", ["i4"])):
        ra, rb = a.read(entity, keys, q), b.read(entity, keys, q)
        for k in ra:
            np.testing.assert_allclose(ra[k], rb[k], rtol=1e-12, err_msg=k)
    assert a.read_user("u0", q)["user_events"] > 0
    other = build_feature_set({**CFG, "half_lives": ["1h", "2h"]})
    with pytest.raises(Exception, match="feature set"):
        OnlineFeatures.load(tmp_path / "state", other)


def test_read_user_is_fast_enough():
    import time

    fs = build_feature_set(CFG)
    ev = random_events(np.random.default_rng(1), 2000)
    on = OnlineFeatures(fs, batch.fit(scan_events(ev), fs, 1e5))
    on.update(ev.sort("timestamp"))
    lat = []
    for _ in range(300):
        t0 = time.perf_counter()
        on.read_user("u1", 4e5)
        lat.append(time.perf_counter() - t0)
    assert np.median(lat) < 5e-3  # generous: the bench measures the real p99


def test_identity_resolution_links_devices_and_counts_conflicts():
    from recsys.features.identity import resolve_identities, union_find

    ev = pl.DataFrame({
        "user_id":    ["anon1", "alice", "anon1", "anon2", "bob",  "anon3", "alice", "anon4"],
        "item_id":    ["i1"] * 8,
        "timestamp":  [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        "event_type": ["view", "login", "click", "view", "login", "view", "login", "view"],
        "device_id":  ["d1", "d1", "d1", "d2", "d3", "d3", "d3", "d9"],
        "session_id": ["s1", "s1", "s2", "s3", "s4", "s5", "s6", "s9"],
    })
    out, rep = resolve_identities(ev)
    users = out["user_id"].to_list()
    assert users[0] == users[2] == "alice"    # anonymous on alice's device
    assert users[3] == "anon2"                # never linked
    assert users[5] == "alice"                # d3 saw bob once and alice once: tie -> smallest id
    assert users[7] == "anon4"
    assert rep["conflict_devices"] == 1 and rep["conflict_components"] == 1
    assert out["raw_user_id"].to_list() == ev["user_id"].to_list()
    again, rep2 = resolve_identities(ev.reverse())
    assert sorted(again["user_id"].to_list()) == sorted(users) and rep2 == rep  # deterministic
    assert union_find(5, np.array([0, 3]), np.array([1, 4])).tolist() == [0, 0, 2, 3, 3]


def _world_features(n_users=300, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    n = 4000
    return pl.DataFrame({"user_id": [f"u{i}" for i in range(n)],
                         "user_ctr": rng.beta(2, 8, n) + shift,
                         "user_events": rng.poisson(20 + 40 * shift, n).astype(np.int64),
                         "device": rng.choice(["web", "app", "email"], n, p=[0.5 - shift, 0.3, 0.2 + shift])})


def test_drift_found_when_planted_and_not_otherwise(tmp_path):
    ref = _world_features(seed=0)
    same = _world_features(seed=1)
    shifted = _world_features(seed=2, shift=0.15)
    from recsys.features.drift import drift_report

    ok = drift_report(ref, same, tmp_path / "same")
    bad = drift_report(ref, shifted, tmp_path / "shift")
    assert ok["n_drifted"] == 0, ok["drifted"]
    assert set(bad["drifted"]) == {"user_ctr", "user_events", "device"}
    assert (tmp_path / "shift" / "plots" / "user_ctr.png").stat().st_size > 1000
    assert bad["features"]["device"]["kind"] == "categorical" and bad["features"]["user_ctr"]["ks"] > 0.1


def test_drift_cli_writes_summary_and_plots(tmp_path):
    _world_features(seed=0).write_parquet(tmp_path / "r.parquet")
    _world_features(seed=2, shift=0.15).write_parquet(tmp_path / "c.parquet")
    res = run("features", "drift", f"reference={tmp_path / 'r.parquet'}", f"current={tmp_path / 'c.parquet'}",
              f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["n_drifted"] == 3 and (tmp_path / "run" / "plots" / "device.png").is_file()
    bad = run("features", "drift", f"reference={tmp_path / 'nope.parquet'}", f"current={tmp_path / 'c.parquet'}",
              f"hydra.run.dir={tmp_path / 'run2'}", cwd=tmp_path)
    assert bad.returncode == 2 and "nope.parquet: no such file" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_skew_reports_mismatches_per_feature(tmp_path):
    from recsys.features.skew import skew_report

    fs = build_feature_set(CFG)
    ev = random_events(np.random.default_rng(7), 400).sort("timestamp")
    on = OnlineFeatures(fs, None)
    rows = []
    times = np.quantile(ev["timestamp"].to_numpy(), [0.3, 0.6, 0.9]) + 0.5
    done = 0
    for q in times:  # serve: apply events before q, log what the store returned
        upto = int((ev["timestamp"] < q).sum())
        on.update(ev[done:upto])
        done = upto
        for u in ("u0", "u1", "u2"):
            rows.append({"user_id": u, "timestamp": float(q), **on.read_user(u, float(q))})
    logged = pl.DataFrame(rows)
    clean = skew_report(logged, scan_events(ev), fs, None)
    assert clean["total_mismatches"] == 0 and clean["n_features"] > 20
    broken = logged.with_columns(pl.col("user_clicks") + 1, pl.col("user_dwell_mean") * 1.01)
    res = skew_report(broken, scan_events(ev), fs, None)
    assert res["n_features_with_mismatches"] == 2
    assert res["features"]["user_clicks"]["mismatches"] == len(rows)


def test_build_and_erase_leave_nothing_of_the_user(tmp_path):
    from recsys.data.synthetic import SyntheticConfig, generate_world

    w = generate_world(SyntheticConfig(n_users=40, n_items=30, n_categories=3, n_requests=10, seed=2))
    events = pl.from_arrow(w.events).join(pl.from_arrow(w.items).select("item_id", "category"), on="item_id")
    path = tmp_path / "events.parquet"
    events.write_parquet(path)
    out = tmp_path / "build"
    res = run("features", "build", f"events={path}", f"out={out}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (out / "online_state" / "meta.json").is_file() and (out / "user.parquet").is_file()
    victim = "7"
    assert pl.read_parquet(out / "user.parquet").filter(pl.col("user_id") == victim).height == 1
    res = run("data", "erase", f"user_id={victim}", f"events={path}", f"features_dir={out}",
              f"online_state={out / 'online_state'}", f"hydra.run.dir={tmp_path / 'run2'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    from recsys.features.erasure import find_user

    assert find_user(victim, [str(path), str(out)]) == []
    s = json.loads((tmp_path / "run2" / "summary.json").read_text())
    assert s["events_removed"] == events.filter(pl.col("user_id") == victim).height > 0
    # derived item features equal a rebuild from events that never had the user
    manifest = json.loads((out / "manifest.json").read_text())
    fs = build_feature_set(manifest["config"])
    rebuilt = batch.snapshot(events.filter(pl.col("user_id") != victim), fs, manifest["as_of"], manifest["params"])
    stored = pl.read_parquet(out / "item.parquet").sort("item_id")
    assert stored["item_events"].to_list() == rebuilt["item"].sort("item_id")["item_events"].to_list()
    online = OnlineFeatures.load(out / "online_state", fs)
    assert victim not in online.tables["user"].index
    assert all(k[0] != victim for k in online.tables["user_item"].index)
    again = run("data", "erase", f"user_id={victim}", f"events={path}", f"hydra.run.dir={tmp_path / 'run3'}",
                cwd=tmp_path)
    assert again.returncode == 2 and "unknown user id" in again.stderr


def test_ranker_table_gains_point_in_time_behavioural_features():
    from recsys.data.synthetic import SyntheticConfig, generate_world
    from recsys.features.ranker import add_behavioural_features, build_ranker_features

    w = generate_world(SyntheticConfig(n_users=60, n_items=40, n_categories=3, n_requests=300, seed=4))
    base = build_ranker_features(w)
    t = add_behavioural_features(base, w, CFG, names=["user_events", "ui_views", "item_ctr_eb"])
    assert t.dense == [*base.dense, "bf_user_events", "bf_ui_views", "bf_item_ctr_eb"]
    assert len(t) == len(base) and all(np.isfinite(t.features[k]).all() for k in t.dense)
    ev = pl.from_arrow(w.events).filter(pl.col("event_type") != "login")
    u, ts = w.impressions["user_id"][0].as_py(), w.impressions["timestamp"][0].as_py()
    n_before = ev.filter((pl.col("user_id") == u) & (pl.col("timestamp") < ts)).height
    assert t.features["bf_user_events"][0] == pytest.approx(np.log1p(n_before), rel=1e-6)
    assert t.version.startswith(base.version + "+behavioural/")


def test_small_read_paths_match_the_general_ones():
    """The few-key evaluate block, the flat write buffer and read_user give the
    values of the per-feature loop and of read() exactly."""
    from recsys.features.transforms import SMALL_ROWS, evaluate

    fs = build_feature_set(CFG)
    ev = random_events(np.random.default_rng(11), 400).sort("timestamp")
    params = batch.fit(scan_events(ev), fs, float(ev["timestamp"].median()))
    on = OnlineFeatures(fs, params, buffer_size=64)
    for r in ev[:300].iter_rows(named=True):
        on.ingest_event(r)
    q = float(ev["timestamp"].max()) + 5.0
    users = sorted({r["user_id"] for r in ev[:300].iter_rows(named=True)}) + ["nobody"]
    assert on.pending > 0
    vec = on.read_user(users[0], q)  # flushes the user entity first (read-your-writes)
    full = on.read("user", users, q)
    assert list(vec) == list(full)
    for k, v in vec.items():
        np.testing.assert_array_equal(v, full[k][0], err_msg=k)
    for u in users[1:4]:
        vec = on.read_user(u, q)
        for k, v in on.read("user", [u], q).items():
            np.testing.assert_array_equal(vec[k], v[0], err_msg=k)
    # block path (<= SMALL_ROWS keys) == per-feature loop (more keys), element-wise
    for entity in fs.entities:
        rows = np.arange(SMALL_ROWS + 1) % max(len(on.tables[entity]), 1)
        t = np.full(len(rows), q)
        accs = on._accumulators(entity, rows, t)
        big = evaluate(fs, entity, accs, t, params)
        small = evaluate(fs, entity, {k: v[:3] for k, v in accs.items()}, t[:3], params)
        assert list(big) == list(small)
        for k in big:
            np.testing.assert_array_equal(small[k], big[k][:3], err_msg=k)
