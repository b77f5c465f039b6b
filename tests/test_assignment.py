"""Hash assignment: stable golden buckets, ramps that keep users, holdbacks, shares."""
from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
from scipy import stats

from recsys.experiments.assignment import (
    HOLDBACK,
    N_BUCKETS,
    NOT_IN_EXPERIMENT,
    ExperimentDesign,
    Holdback,
    assign,
    buckets,
    in_holdback,
)

IDS = np.char.add("user", np.arange(100_000).astype(str))


def test_golden_buckets_never_change():
    # pinned: changing the hash scheme would silently reshuffle every running experiment
    assert buckets(["u1", "u2", "alice", "12345", 42], "exp-2026").tolist() == [8888, 4909, 3946, 5365, 9898]


def test_bucket_is_sha256_of_salt_and_id():
    ids = ["a", "b", "ü-ñ", "10"]
    want = [int.from_bytes(hashlib.sha256(f"s/{u}".encode()).digest()[:8], "big") % N_BUCKETS for u in ids]
    assert buckets(np.array(ids), "s").tolist() == want
    assert buckets(np.array([10]), "s").tolist() == buckets(["10"], "s").tolist()  # ids hashed as str


def test_golden_arms():
    d = ExperimentDesign("e", "exp-2026", {"control": 0.5, "treatment": 0.5})
    # arm buckets (salt "exp-2026:arm") are 1424, 424, 2164, 8117; control holds [0, 5000)
    assert assign(["u1", "u2", "alice", "12345"], d).tolist() == ["control", "control", "control", "treatment"]


def test_buckets_uniform():
    counts = np.bincount(buckets(IDS, "uniform") // 1000, minlength=10)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_traffic_ramp_keeps_assigned_users():
    arms = {"control": 0.5, "treatment": 0.5}
    a10 = assign(IDS, ExperimentDesign("e", "ramp", arms, traffic=0.1))
    a20 = assign(IDS, ExperimentDesign("e", "ramp", arms, traffic=0.2))
    was_in = a10 != NOT_IN_EXPERIMENT
    assert abs(was_in.mean() - 0.1) < 0.005 and abs((a20 != NOT_IN_EXPERIMENT).mean() - 0.2) < 0.005
    np.testing.assert_array_equal(a20[was_in], a10[was_in])  # nobody moved arm or left


def test_holdback_excluded_from_all_treatments():
    hb = Holdback("global-holdback", 0.05)
    held = in_holdback(IDS, hb)
    assert abs(held.mean() - 0.05) < 0.004
    for salt in ("exp-a", "exp-b"):
        arm = assign(IDS, ExperimentDesign("e", salt, {"control": 0.5, "t1": 0.25, "t2": 0.25}, holdback=hb))
        assert (arm[held] == HOLDBACK).all()
        assert (arm[~held] != HOLDBACK).all() and (arm[~held] != NOT_IN_EXPERIMENT).all()


@pytest.mark.parametrize("shares", [{"control": 0.5, "treatment": 0.5}, {"c": 0.5, "t1": 0.3, "t2": 0.2}])
def test_arm_shares_close_to_planned(shares):
    arm = assign(IDS, ExperimentDesign("e", "shares", shares))
    observed = np.array([(arm == a).sum() for a in shares])
    np.testing.assert_allclose(observed / len(IDS), list(shares.values()), atol=0.006)
    assert stats.chisquare(observed, len(IDS) * np.array(list(shares.values()))).pvalue > 1e-3


def test_salts_are_independent():
    a = assign(IDS, ExperimentDesign("e", "salt-1", {"c": 0.5, "t": 0.5})) == "t"
    b = assign(IDS, ExperimentDesign("e", "salt-2", {"c": 0.5, "t": 0.5})) == "t"
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.02
    assert assign(IDS[:100], ExperimentDesign("e", "salt-1", {"c": 0.5, "t": 0.5})).tolist() == \
        assign(IDS[:100], ExperimentDesign("e", "salt-1", {"c": 0.5, "t": 0.5})).tolist()


def test_hashing_speed():
    ids = np.char.add("u", np.arange(200_000).astype(str))
    t0 = time.perf_counter()
    buckets(ids, "speed")
    per_million = (time.perf_counter() - t0) * 5
    assert per_million < 5.0, f"{per_million:.2f} s per million ids"


@pytest.mark.parametrize("kwargs", [dict(arms={"c": 1.0}), dict(arms={"c": 0.5, "t": -0.5}),
                                    dict(arms={"c": 0.5, "t": 0.5}, traffic=0.0),
                                    dict(arms={"c": 0.5, "t": 0.5}, control="x"),
                                    dict(arms={"c": 0.5, HOLDBACK: 0.5})])
def test_bad_designs_raise(kwargs):
    with pytest.raises(ValueError):
        ExperimentDesign("e", "s", **kwargs)


def test_design_dict_round_trip():
    d = ExperimentDesign("e", "s", {"c": 0.3, "t": 0.7}, traffic=0.4, holdback=Holdback("h", 0.05), control="c")
    assert ExperimentDesign.from_dict(d.to_dict()) == d
