"""The synthetic world: determinism, schemas, consistency of the logs with the
ground truth, and the statistical properties later stages rely on."""
from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from recsys.data.synthetic import SyntheticConfig, SyntheticWorld, generate_world
from recsys.schema import EVENT_SCHEMA, EventType

SMALL = SyntheticConfig(n_users=300, n_items=200, seed=3)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return generate_world(SMALL)


@pytest.fixture(scope="module")
def default_world() -> SyntheticWorld:
    return generate_world(SyntheticConfig())


def ints(col: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(col.to_numpy(zero_copy_only=False)).astype(np.int64)


def clicks(world: SyntheticWorld) -> tuple[np.ndarray, np.ndarray]:
    """Consumed sequences: (user, item) of the click events, by user then time."""
    ev = world.events.filter(pc.equal(world.events["event_type"], EventType.CLICK.value))
    user, item, ts = ints(ev["user_id"]), ints(ev["item_id"]), ev["timestamp"].to_numpy()
    order = np.lexsort((ts, user))
    return user[order], item[order]


def user_bounds(user: np.ndarray) -> np.ndarray:
    """Row ranges of each user's run in a user-sorted array: (n_runs + 1,)."""
    return np.flatnonzero(np.r_[True, user[1:] != user[:-1], True])


def test_deterministic_for_a_seed(world: SyntheticWorld) -> None:
    again = generate_world(SMALL)
    for name in ("events", "users", "items", "impressions"):
        assert getattr(again, name).equals(getattr(world, name)), name
    assert world.truth.keys() == again.truth.keys()
    for k, v in world.truth.items():
        np.testing.assert_array_equal(v, again.truth[k], err_msg=k)
    other = generate_world(dataclasses.replace(SMALL, seed=4))
    assert not other.events.equals(world.events)
    assert not other.impressions.equals(world.impressions)
    assert not np.array_equal(other.truth["user_factors"], world.truth["user_factors"])


def test_schemas_and_ids(world: SyntheticWorld) -> None:
    cfg = world.config
    assert world.events.schema == EVENT_SCHEMA
    assert world.users.column_names == ["user_id", "group", "age_bucket", "region", "n_devices"]
    assert world.users["user_id"].to_pylist() == [str(i) for i in range(1, cfg.n_users + 1)]
    assert world.users.schema.field("n_devices").type == pa.int64()
    assert world.items.column_names == ["item_id", "category", "price", "tags"]
    assert world.items["item_id"].to_pylist() == [str(i) for i in range(1, cfg.n_items + 1)]
    assert world.items.schema.field("tags").type == pa.list_(pa.string())
    tag_counts = pc.list_value_length(world.items["tags"]).to_numpy()
    assert tag_counts.min() >= 1 and tag_counts.max() <= 3
    assert all(len(set(t)) == len(t) for t in world.items["tags"].to_pylist())
    assert set(world.users["group"].to_pylist()) == {f"g{g}" for g in range(cfg.n_groups)}
    imp = world.impressions
    expected = {"request_id": pa.int64(), "user_id": pa.string(), "timestamp": pa.float64(), "position": pa.int32(),
                "item_id": pa.string(), "propensity": pa.float64(), "click": pa.int8(), "logging_policy": pa.string()}
    assert {f.name: f.type for f in imp.schema} == expected
    assert imp.num_rows == cfg.n_requests * cfg.slate_size
    for table in (world.events, imp):
        u, i = ints(table["user_id"]), ints(table["item_id"])
        assert u.min() >= 1 and u.max() <= cfg.n_users
        assert i.min() >= 1 and i.max() <= cfg.n_items
    assert set(pc.unique(world.events["event_type"]).to_pylist()) == {"view", "click", "add_to_cart", "purchase"}
    assert set(pc.unique(world.events["channel"]).to_pylist()) <= set(cfg.channels)


def test_timeline_and_sessions(world: SyntheticWorld) -> None:
    ev = world.events
    user, ts = ints(ev["user_id"]), ev["timestamp"].to_numpy()
    assert np.all(np.diff(user) >= 0), "events grouped by user"
    same_user = user[1:] == user[:-1]
    assert np.all(np.diff(ts)[same_user] >= 0), "time non-decreasing within a user"
    session = np.asarray(ev["session_id"].to_pylist())
    same_sess = session[1:] == session[:-1]
    gap = np.diff(ts)
    assert gap[same_user & same_sess].max() <= 1800.0
    assert gap[same_user & ~same_sess].min() > 1800.0
    assert np.all(~same_sess | same_user), "a session never spans two users"
    starts = np.r_[True, ~same_sess]
    assert len(set(session[starts])) == starts.sum(), "session ids are unique"
    day = 86_400.0
    assert ts.min() >= world.config.start_time and ts.max() - ts.min() < 120 * day
    assert ts.max() - ts.min() > 30 * day
    # one device and one channel per session; each user's devices within n_devices
    for col in ("device_id", "channel"):
        vals = np.asarray(ev[col].to_pylist())
        assert np.all((vals[1:] == vals[:-1]) | ~same_sess), col
    devices = np.asarray(ev["device_id"].to_pylist())
    n_dev = ints(world.users["n_devices"])
    per_user = {(u, d) for u, d in zip(user.tolist(), devices.tolist())}
    counts = np.bincount([u for u, _ in per_user], minlength=len(n_dev) + 1)[1:]
    assert np.all(counts <= n_dev) and n_dev.min() >= 1 and n_dev.max() <= 3


def test_consumed_sequences(world: SyntheticWorld) -> None:
    user, item = clicks(world)
    b = user_bounds(user)
    lens = np.diff(b)
    assert len(lens) == world.config.n_users
    assert lens.min() >= world.config.min_seq_len
    np.testing.assert_array_equal(lens, world.truth["seq_len"][1:])
    assert len(np.unique(user * (world.config.n_items + 1) + item)) == len(item), "no repeats within a user"
    assert 0.6 * world.config.seq_len_mean < lens.mean() < 1.3 * world.config.seq_len_mean
    assert lens.std() > 3.0, "lengths vary"


def test_funnel(world: SyntheticWorld) -> None:
    ev = world.events
    user, item, ts = ints(ev["user_id"]), ints(ev["item_id"]), ev["timestamp"].to_numpy()
    kind = np.asarray(ev["event_type"].to_pylist())
    value = ev["value"].to_numpy(zero_copy_only=False)
    clicked = np.flatnonzero(kind == "click")
    prev = clicked - 1
    assert np.all(kind[prev] == "view") and np.all(item[prev] == item[clicked]) and np.all(user[prev] == user[clicked])
    key = user * (world.config.n_items + 1) + item
    first_cart = {}
    for k, t in zip(key[kind == "add_to_cart"][::-1], ts[kind == "add_to_cart"][::-1]):
        first_cart[k] = t
    buys = np.flatnonzero(kind == "purchase")
    assert len(buys) > 0
    assert all(key[i] in first_cart and first_cart[key[i]] < ts[i] for i in buys)
    price = world.items["price"].to_numpy()
    np.testing.assert_allclose(value[buys], price[item[buys] - 1])
    views = kind == "view"
    assert np.all(value[views] > 0) and np.all(np.isnan(value[kind == "click"]))
    carts, bought = set(key[kind == "add_to_cart"]), set(key[buys])
    assert len(carts - bought) > 0, "some carts are abandoned"
    viewed_only = set(key[views]) - set(key[clicked])
    assert len(viewed_only) > 0, "some viewed items are never clicked"
    # dwell is longer when the true affinity is higher
    aff = np.einsum("nd,nd->n", world.truth["user_factors"][user[views]], world.truth["item_factors"][item[views]])
    assert np.corrcoef(aff, np.log(value[views]))[0, 1] > 0.2


def test_propensities_and_slates(world: SyntheticWorld) -> None:
    imp, k = world.impressions, world.config.slate_size
    prop = imp["propensity"].to_numpy()
    assert prop.min() > 0 and prop.max() <= 1
    user = ints(imp["user_id"]).reshape(-1, k)
    item = ints(imp["item_id"]).reshape(-1, k)
    np.testing.assert_array_equal(imp["position"].to_numpy().reshape(-1, k), np.tile(np.arange(k), (len(item), 1)))
    assert np.all(user == user[:, :1]) and np.all(np.diff(imp["request_id"].to_numpy().reshape(-1, k)[:, 0]) == 1)
    assert np.all(np.diff(imp["timestamp"].to_numpy()) >= 0)
    srt = np.sort(item, axis=1)
    assert not np.any(srt[:, 1:] == srt[:, :-1]), "no duplicate inside a slate"
    p = world.logging_distribution(user[:, 0])
    assert np.all(p[:, 0] == 0) and np.allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(prop.reshape(-1, k), np.take_along_axis(p, item, axis=1), rtol=1e-12)
    # exact per-position marginals: observed counts vs sum of propensities
    expected = p.sum(axis=0)
    for pos in range(k):
        observed = np.bincount(item[:, pos], minlength=p.shape[1])
        ok = expected >= 5
        chi2 = ((observed[ok] - expected[ok]) ** 2 / expected[ok]).sum() / ok.sum()
        assert chi2 < 1.5, (pos, chi2)


def test_ctr_by_position_matches_truth(world: SyntheticWorld) -> None:
    imp, k = world.impressions, world.config.slate_size
    pos, click = imp["position"].to_numpy(), imp["click"].to_numpy()
    true_p = world.click_probability(ints(imp["user_id"]), ints(imp["item_id"]), pos)
    np.testing.assert_allclose(
        true_p, world.truth["position_bias"][pos] * world.relevance(ints(imp["user_id"]), ints(imp["item_id"])))
    ctr = np.array([click[pos == q].mean() for q in range(k)])
    assert np.all(np.diff(ctr) < 0), ctr
    for q in range(k):
        m = true_p[pos == q].mean()
        assert abs(ctr[q] - m) < 4 * np.sqrt(m * (1 - m) / (pos == q).sum()) + 1e-3, (q, ctr[q], m)


def test_relevance_bounds_and_broadcast(world: SyntheticWorld) -> None:
    rel = world.relevance(np.arange(1, 51)[:, None], np.arange(1, world.config.n_items + 1)[None, :])
    assert rel.shape == (50, world.config.n_items) and rel.min() > 0 and rel.max() < 1
    assert world.relevance(np.array([7]), np.array([9]))[0] == pytest.approx(rel[6, 8])


def heavy_tail_share(world: SyntheticWorld) -> float:
    _, item = clicks(world)
    counts = np.sort(np.bincount(item, minlength=world.config.n_items + 1)[1:])[::-1]
    return counts[: world.config.n_items // 10].sum() / counts.sum()


def test_popularity_is_heavy_tailed(world: SyntheticWorld, default_world: SyntheticWorld) -> None:
    assert heavy_tail_share(default_world) > 0.35
    # 200 items with ~20 unique items per user saturate the head a little
    assert heavy_tail_share(world) > 0.3
    flat = generate_world(dataclasses.replace(SMALL, popularity_exponent=0.0, n_requests=10))
    assert heavy_tail_share(flat) < heavy_tail_share(world)


def markov_vs_popularity(world: SyntheticWorld) -> tuple[float, float]:
    """Leave-last-out HR@10 of "most frequent successor of the previous item
    (popularity fills up)" and of global popularity."""
    user, item = clicks(world)
    b = user_bounds(user)
    last, prev = item[b[1:] - 1], item[b[1:] - 2]
    train = np.ones(len(item), dtype=bool)
    train[b[1:] - 1] = False
    pair = (user[1:] == user[:-1]) & train[1:]
    m = world.config.n_items + 1
    trans = np.zeros((m, m))
    np.add.at(trans, (item[:-1][pair], item[1:][pair]), 1.0)
    pop = np.bincount(item[train], minlength=m).astype(np.float64)
    pop[0] = -1.0
    top_pop = np.argsort(-pop, kind="stable")[:10]
    score = trans[prev] + 1e-3 * pop[None, :] / pop.max()
    top_markov = np.argsort(-score, axis=1, kind="stable")[:, :10]
    return float((top_markov == last[:, None]).any(axis=1).mean()), float(np.isin(last, top_pop).mean())


def test_markov_beats_popularity(world: SyntheticWorld) -> None:
    hr_markov, hr_pop = markov_vs_popularity(world)
    assert hr_markov >= 1.5 * hr_pop, (hr_markov, hr_pop)
    no_seq = generate_world(dataclasses.replace(SMALL, sequential_strength=0.0, n_requests=10))
    hr_markov0, _ = markov_vs_popularity(no_seq)
    assert hr_markov0 < hr_markov, "the transition structure is what the Markov model finds"


def test_groups_differ(world: SyntheticWorld) -> None:
    group = np.asarray([int(g[1:]) for g in world.users["group"].to_pylist()])
    np.testing.assert_array_equal(group, world.truth["user_group"][1:])
    user, item = clicks(world)
    cat = world.truth["item_category"][item]
    dist = [np.bincount(cat[group[user - 1] == g], minlength=world.config.n_categories) for g in (0, 1)]
    dist = [d / d.sum() for d in dist]
    assert 0.5 * np.abs(dist[0] - dist[1]).sum() > 0.15
    assert min((group == 0).sum(), (group == 1).sum()) >= 0.2 * len(group)


def test_save_load_round_trip(world: SyntheticWorld, tmp_path) -> None:
    world.save(tmp_path / "w")
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == sorted(
        ["config.json", "truth.safetensors", "events.parquet", "users.parquet", "items.parquet", "impressions.parquet"])
    back = SyntheticWorld.load(tmp_path / "w")
    assert back.config == world.config and isinstance(back.config.channels, tuple)
    for name in ("events", "users", "items", "impressions"):
        assert getattr(back, name).schema == getattr(world, name).schema, name
        assert getattr(back, name).equals(getattr(world, name)), name
    assert back.truth.keys() == world.truth.keys()
    for k, v in world.truth.items():
        assert back.truth[k].dtype == v.dtype
        np.testing.assert_array_equal(back.truth[k], v, err_msg=k)
    u, i = np.array([1, 2, 3]), np.array([5, 6, 7])
    np.testing.assert_array_equal(back.click_probability(u, i, np.array([0, 1, 2])),
                                  world.click_probability(u, i, np.array([0, 1, 2])))


def test_policy_value_matches_monte_carlo(world: SyntheticWorld) -> None:
    rng = np.random.default_rng(0)
    k, m = world.config.slate_size, world.config.n_items + 1
    users = rng.integers(1, world.config.n_users + 1, 200)
    logits = 3.0 * rng.standard_normal((len(users), k, m))
    logits[:, :, 0] = -np.inf
    pi = np.exp(logits - logits.max(axis=2, keepdims=True))
    pi /= pi.sum(axis=2, keepdims=True)
    exact = world.policy_value(pi, users)
    reps = 400
    cum = np.cumsum(pi, axis=2)
    draws = rng.random((reps, len(users), k, 1))
    items = np.minimum((cum[None] < draws).sum(axis=3), m - 1)  # (reps, n, k)
    p_click = world.click_probability(users[None, :, None], items, np.arange(k)[None, None, :])
    clicks_per_slate = (rng.random(p_click.shape) < p_click).sum(axis=2).ravel()
    se = clicks_per_slate.std() / np.sqrt(len(clicks_per_slate))
    assert abs(clicks_per_slate.mean() - exact) < 4 * se, (clicks_per_slate.mean(), exact, se)
    # (n, m) means the same distribution at every position
    same = pi[:, 0, :]
    assert world.policy_value(same, users) == pytest.approx(world.policy_value(np.repeat(same[:, None], k, 1), users))
    with pytest.raises(ValueError):
        world.policy_value(pi[:, :2], users)


def test_logged_clicks_match_logging_policy_value(world: SyntheticWorld) -> None:
    imp, k = world.impressions, world.config.slate_size
    users = ints(imp["user_id"])[::k]
    clicks_per_request = imp["click"].to_numpy().reshape(-1, k).sum(axis=1)
    exact = world.policy_value(world.logging_distribution(users), users)
    se = clicks_per_request.std() / np.sqrt(len(clicks_per_request))
    assert abs(clicks_per_request.mean() - exact) < 4 * se, (clicks_per_request.mean(), exact)
    # the logger is decent but not optimal: better than uniform, worse than the oracle
    rel = world.relevance(users[:, None], np.arange(1, world.config.n_items + 1)[None, :])
    best = np.argsort(-rel, axis=1)[:, :k] + 1
    oracle = np.zeros((len(users), k, world.config.n_items + 1))
    oracle[np.arange(len(users))[:, None], np.arange(k)[None, :], best] = 1.0
    uniform = np.full((len(users), world.config.n_items + 1), 1.0 / world.config.n_items)
    uniform[:, 0] = 0.0
    assert world.policy_value(uniform, users) < exact < world.policy_value(oracle, users)


def test_next_item_distribution_matches_generated_steps() -> None:
    """Chi-square of (first item, item at step s) counts against the exact law."""
    cfg = SyntheticConfig(n_users=6000, n_items=30, n_categories=3, seq_len_mean=5.0, min_seq_len=3,
                          n_requests=10, seed=11)
    world = generate_world(cfg)
    user, item = clicks(world)
    b = user_bounds(user)[:-1]
    m = cfg.n_items + 1
    for step in range(3):
        key = item[b] if step else np.zeros(len(b), dtype=np.int64)
        observed = np.zeros((m, m))
        np.add.at(observed, (key, item[b + step]), 1.0)
        expected = np.zeros((m, m))
        for r, u in enumerate(user[b]):
            history = item[b[r]: b[r] + step]
            dist = world.next_item_distribution(int(u), history)
            assert dist[history].sum() == 0 and dist.sum() == pytest.approx(1.0)
            expected[key[r]] += dist
        ok = expected >= 5
        chi2 = ((observed[ok] - expected[ok]) ** 2 / expected[ok]).sum() / ok.sum()
        assert chi2 < 1.6, (step, chi2)


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="min_seq_len"):
        SyntheticConfig(n_items=6, min_seq_len=5)
    with pytest.raises(ValueError, match="logging_temperature"):
        SyntheticConfig(logging_temperature=0.0)
