"""Point-in-time correctness: a training example at t sees only events before t."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys.features import batch
from recsys.features.definitions import build_feature_set
from recsys.features.events import scan_events
from recsys.features.pointintime import build_training_set
from recsys.utils.errors import DataError
from tests.test_features_equality import CFG, random_events


@pytest.fixture(scope="module")
def world():
    from recsys.data.synthetic import SyntheticConfig, generate_world

    return generate_world(SyntheticConfig(n_users=50, n_items=40, n_categories=3, n_requests=60, seed=1))


def _examples(world, n=40, seed=0):
    imp = pl.from_arrow(world.impressions).select("user_id", "item_id", "timestamp", "click")
    return imp.sample(n, seed=seed).sort("timestamp")


def test_no_feature_uses_a_later_event(world):
    fs = build_feature_set(CFG)
    events = pl.from_arrow(world.events)
    items = pl.from_arrow(world.items).select("item_id", "category")
    ex = _examples(world)
    params = batch.fit(scan_events(events, items=items), fs, float(ex["timestamp"].min()))
    full, info = build_training_set(events, ex, fs, params=params, items=items)
    names = [c for c in full.columns if c not in ex.columns and c != "category"]
    assert len(names) == info["n_features"] > 40
    rng = np.random.default_rng(0)
    for i in rng.choice(ex.height, 8, replace=False):
        t = ex["timestamp"][int(i)]
        # the log with every event at or after t replaced by noise: later events changed, moved, added
        later = events.filter(pl.col("timestamp") >= t)
        noise = later.with_columns(pl.col("event_type").shuffle(seed=1), pl.col("value") * 3.0,
                                   pl.col("item_id").shuffle(seed=2))
        changed = pl.concat([events.filter(pl.col("timestamp") < t), noise, noise.with_columns(
            pl.col("timestamp") + 1.0)])
        other, _ = build_training_set(changed, ex[int(i):int(i) + 1], fs, params=params, items=items)
        for n in names:
            a, b = full[n][int(i)], other[n][0]
            assert (a is None and b is None) or a == pytest.approx(b, rel=1e-9, abs=1e-9), (n, a, b)


def test_event_at_the_example_time_is_excluded():
    fs = build_feature_set(CFG)
    ev = pl.DataFrame({"user_id": ["u", "u"], "item_id": ["i", "i"], "timestamp": [10.0, 20.0],
                       "event_type": ["click", "click"], "value": [None, None], "session_id": ["s", "s"],
                       "category": ["c", "c"]})
    ex = pl.DataFrame({"user_id": ["u", "u", "u"], "item_id": ["i", "i", "i"], "timestamp": [10.0, 20.0, 20.5]})
    out, _ = build_training_set(ev, ex, fs, params=None, fit_time=10.0)
    assert out["user_clicks"].to_list() == [0, 1, 2]
    assert out["ui_clicks"].to_list() == [0, 1, 2]
    assert out["user_recency_s"].to_list()[1:] == [10.0, 0.5]


def test_params_fitted_before_the_first_example(world):
    fs = build_feature_set(CFG)
    ex = _examples(world)
    out, info = build_training_set(world.events, ex, fs, items=world.items)
    assert info["fit_time"] == pytest.approx(float(ex["timestamp"].min()))
    assert info["params"]["_fit_time"] <= float(ex["timestamp"].min())
    assert out.height == ex.height and out["user_ctr_eb"].is_finite().all()


def test_ttl_drops_old_events():
    from recsys.features.retention import apply_ttl

    rng = np.random.default_rng(3)
    ev = random_events(rng, 300, span=10 * 86400.0)
    fs = build_feature_set(CFG)
    T = 10 * 86400.0
    kept = apply_ttl(scan_events(ev), T, "2d")
    snap = batch.snapshot(kept, fs, T, None)
    direct = batch.snapshot(ev.filter(pl.col("timestamp") >= T - 2 * 86400.0), fs, T, None)
    from polars.testing import assert_frame_equal

    assert_frame_equal(snap["user"].sort("user_id"), direct["user"].sort("user_id"), rel_tol=1e-9, abs_tol=1e-9)
    assert snap["user"]["user_events"].sum() < batch.snapshot(ev, fs, T, None)["user"]["user_events"].sum()


@pytest.mark.parametrize("bad,phrase", [
    (lambda p: p / "missing.parquet", "no such file"),
    (lambda p: (p / "x.parquet").write_text("not parquet") and p / "x.parquet", "not a readable Parquet"),
])
def test_bad_event_files_raise_data_error(tmp_path, bad, phrase):
    path = bad(tmp_path)
    with pytest.raises(DataError, match=phrase) as e:
        batch.snapshot(str(path), build_feature_set(CFG), 1.0, None)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_wrong_schema_nan_and_empty_raise_data_error(tmp_path):
    fs = build_feature_set(CFG)
    good = random_events(np.random.default_rng(0), 20)
    cases = {"schema.parquet": (good.drop("timestamp"), "timestamp"),
             "nan.parquet": (good.with_columns(timestamp=pl.lit(float("nan"))), "NaN"),
             "empty.parquet": (good.head(0), "empty"),
             "type.parquet": (good.with_columns(timestamp=pl.lit("x")), "expected")}
    for name, (df, phrase) in cases.items():
        p = tmp_path / name
        df.write_parquet(p)
        with pytest.raises(DataError, match=phrase) as e:
            batch.snapshot(str(p), fs, 1e9, None)
        assert name in str(e.value)
