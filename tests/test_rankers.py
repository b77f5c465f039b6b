"""Rankers (DCN-v2, MLP), their point-in-time features, time split, metrics and
a tiny training run that must beat a position x popularity baseline."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.data.synthetic import SyntheticConfig, generate_world
from recsys.evaluation.binary import expected_calibration_error, log_loss, roc_auc
from recsys.features.ranker import CATEGORICAL, DENSE, build_ranker_features, prior_counts
from recsys.models.rankers import DCNv2, MLPRanker
from recsys.training.ranker.data import RankerDataModule, position_popularity_baseline, time_split

VOCAB = {"user": 11, "item": 21, "position": 5}


def _batch(b: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(b)
    out = {k: torch.randint(0, v, (b,), generator=g) for k, v in VOCAB.items()}
    out["price_log"] = torch.rand(b, generator=g)
    return out


@pytest.fixture(scope="module")
def world():
    return generate_world(SyntheticConfig(n_users=300, n_items=120, n_categories=5, n_requests=12000, seed=1))


@pytest.mark.parametrize("make", [
    lambda: DCNv2(VOCAB, ["price_log"], embedding_dim=4, n_cross=2, deep=(8,)),
    lambda: DCNv2(VOCAB, ["price_log"], embedding_dim=4, n_cross=1, deep=(8, 4), structure="parallel"),
    lambda: MLPRanker(VOCAB, ["price_log"], embedding_dim=4, deep=(8,)),
])
@pytest.mark.parametrize("b", [1, 3, 64])
def test_shapes_and_grad(make, b):
    net = make()
    assert net.input_names == ["item", "position", "user", "price_log"]
    out = net(**_batch(b))
    assert out.shape == (b,) and out.dtype == torch.float32
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("make", [
    lambda v: DCNv2(v, ["price_log"], embedding_dim=4, n_cross=2, deep=(8,), structure="parallel"),
    lambda v: MLPRanker(v, ["price_log"], embedding_dim=4, deep=(8,)),
])
def test_save_rebuild_round_trip_gives_the_same_scores(make, tmp_path):
    """model_args.json is written with sorted keys: the rebuilt net must not
    depend on the order of ``vocab_sizes``."""
    from recsys.export.onnx_ranker import rebuild_net
    from recsys.artifacts.models import load_model, save_model

    torch.manual_seed(0)
    net = make({"user": 11, "position": 5, "item": 21}).eval()  # not sorted
    save_model(net, {"vocab_sizes": {"user": 11, "position": 5, "item": 21}, "dense_features": ["price_log"],
                     "embedding_dim": 4, "deep": [8], **({"n_cross": 2, "structure": "parallel"}
                                                         if isinstance(net, DCNv2) else {})}, tmp_path)
    batch = _batch(32)
    with torch.no_grad():
        want = net(**batch)
        for other in (load_model(tmp_path), rebuild_net(tmp_path)[0]):
            torch.testing.assert_close(other(**batch), want, rtol=0, atol=0)


def test_bad_structure_and_empty_vocab():
    with pytest.raises(ValueError, match="structure"):
        DCNv2(VOCAB, structure="diagonal")
    with pytest.raises(ValueError, match="categorical"):
        MLPRanker({}, ["x"])


def test_prior_counts_exclude_own_and_later_requests():
    key = np.array([1, 1, 2, 1, 2, 1])
    req = np.array([0, 0, 0, 1, 2, 3])
    click = np.array([1, 0, 1, 1, 0, 0])
    c, i = prior_counts(key, req, click)
    np.testing.assert_array_equal(i, [0, 0, 0, 2, 1, 3])
    np.testing.assert_array_equal(c, [0, 0, 0, 1, 1, 2])


def test_features_are_point_in_time(world):
    full = build_ranker_features(world)
    assert set(full.features) == set(CATEGORICAL) | set(DENSE)
    for k, v in full.vocab_sizes.items():
        assert full.features[k].min() >= 0 and full.features[k].max() < v, k
    cut = world.impressions.num_rows // 2  # drop the future: earlier rows' features must not change
    import dataclasses

    past = dataclasses.replace(world, impressions=world.impressions.slice(0, cut))
    early = build_ranker_features(past)
    for k in full.features:
        np.testing.assert_array_equal(early.features[k], full.features[k][:cut], err_msg=k)


def test_time_split_has_no_leakage(world):
    table = build_ranker_features(world)
    s = time_split(table, 0.1, 0.2)
    assert sum(len(v) for v in s.values()) == len(table)
    assert table.timestamp[s["train"]].max() <= table.timestamp[s["val"]].min()
    assert table.timestamp[s["val"]].max() <= table.timestamp[s["test"]].min()
    for a, b in [("train", "val"), ("val", "test"), ("train", "test")]:
        assert not set(table.request_id[s[a]]) & set(table.request_id[s[b]])
    assert abs(len(s["test"]) / len(table) - 0.2) < 0.01


def test_binary_metrics():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert roc_auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert np.isnan(roc_auc(np.zeros(3), np.ones(3)))
    assert log_loss(y, np.array([0.5] * 4)) == pytest.approx(np.log(2))
    assert expected_calibration_error(y, np.array([0.0, 0.0, 1.0, 1.0])) == pytest.approx(0.0)
    assert expected_calibration_error(y, np.array([0.5] * 4)) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([1, 1]), np.array([0.2, 0.2])) == pytest.approx(0.8)


def test_tiny_training_beats_position_popularity_baseline(world):
    import pytorch_lightning as L

    from recsys.training.ranker.module import RankerModule

    L.seed_everything(0, verbose=False)
    dm = RankerDataModule(world=world, batch_size=512, val_fraction=0.1, test_fraction=0.2)
    net = DCNv2(dm.table.vocab_sizes, dm.table.dense, embedding_dim=8, n_cross=2, deep=(32,))
    module = RankerModule(net, input_names=net.input_names,
                          optimizer=lambda params: torch.optim.Adam(params, lr=5e-3))
    trainer = L.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
    trainer.fit(module, datamodule=dm)
    trainer.test(module, datamodule=dm, verbose=False)
    test = dm.split_table("test")
    base = roc_auc(test.label, position_popularity_baseline(dm.split_table("train"), test))
    f = test.features
    bayes = roc_auc(test.label, world.click_probability(f["user"], f["item"], f["position"]))
    model = module.results["test"]["test/auc"]
    assert model > base + 0.01, (model, base, bayes)
    assert model <= bayes + 0.02
    assert {"val/auc", "val/log_loss", "val/ece"} <= set(module.results["val"])


def test_rank_train_command_writes_summary_and_model(tmp_path):
    import json

    from tests.helpers import run

    r = run("rank", "train", "data.n_users=100", "data.n_items=60", "data.loader.n_categories=4",
            "data.loader.n_requests=3000", "trainer.max_epochs=1", "parity_rows=1000",
            f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}",
            env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0.5 < s["test/auc"] <= 1 and 0.5 < s["bayes_auc"] <= 1
    assert {"test/log_loss", "test/ece", "baseline_auc", "val/auc"} <= set(s)
    assert s["split"]["feature_set_version"] == "ranker_features/1"
    model = tmp_path / "run" / "model"
    assert {p.name for p in model.iterdir()} >= {"model_args.json", "weights.safetensors", "features.json",
                                                  "parity_rows.safetensors"}
    assert (tmp_path / "run" / "reliability.png").stat().st_size > 1000
    for order in ("model", "logged", "bayes"):
        assert 0 < s[f"test/slate_ndcg@5/{order}"] <= 1 and 0 < s[f"test/slate_ndcg_relevance@5/{order}"] <= 1
    assert s["test/slate_ndcg_relevance@5/bayes"] == pytest.approx(1.0)  # true-relevance order is ideal
    assert s["slate_ndcg"]["groups_with_click"] > 0 and len(s["reliability"]["count"]) > 0


def test_slate_ndcg_by_hand():
    from recsys.evaluation.slates import slate_ndcg

    group = np.array([7, 7, 7, 2, 2, 9, 9])
    label = np.array([0, 1, 0, 1, 0, 0, 0])
    score = np.array([3.0, 2.0, 1.0, 5.0, 4.0, 1.0, 2.0])
    # group 7: the click at rank 2 -> 1/log2(3); group 2: rank 1 -> 1; group 9 has no click: skipped
    res = slate_ndcg(group, label, score, k=5)
    assert res == {"ndcg": pytest.approx((1 / np.log2(3) + 1) / 2), "groups": 2, "skipped": 1}
    assert slate_ndcg(group, label, score, k=1)["ndcg"] == pytest.approx(0.5)  # rank 2 falls outside @1
    assert slate_ndcg(group, label, -score, k=5)["ndcg"] == pytest.approx(1 / np.log2(3))
    with pytest.raises(ValueError, match="lengths differ"):
        slate_ndcg(group, label[:3], score, 5)


def test_reliability_table_and_plot(tmp_path):
    from recsys.evaluation.calibration import reliability_plot

    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 20000)
    y = (rng.uniform(0, 1, 20000) < p).astype(float)
    t = reliability_plot(y, p, tmp_path / "r.png", title="t", ece=expected_calibration_error(y, p), n_bins=10)
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert len(t["count"]) == 10 and sum(t["count"]) == 20000
    np.testing.assert_allclose(t["observed_rate"], t["mean_predicted"], atol=0.03)  # calibrated by construction


def _ratings_data():
    import pyarrow as pa

    from recsys.data.base import LoadedData
    from recsys.data.prepare import build
    from recsys.schema import conform_events

    rng = np.random.default_rng(0)
    n = 600
    t = pa.table({"user_id": pa.array([f"u{i}" for i in rng.integers(0, 30, n)]),
                  "item_id": pa.array([f"i{i}" for i in rng.integers(0, 50, n)]),
                  "timestamp": pa.array(rng.permutation(n).astype(float) * 10),
                  "event_type": pa.array(["rating"] * n), "value": pa.array(rng.integers(1, 6, n).astype(float))})
    return build(LoadedData(conform_events(t), timestamp_kind="unix"), "ratings", {})


def test_rating_features_labels_negatives_and_point_in_time():
    from recsys.features.ranker import build_rating_features

    data = _ratings_data()
    table = build_rating_features(data, threshold=4.0, negatives_per_event=2, seed=0)
    inter = data.interactions
    n = inter.num_rows
    assert len(table) == 3 * n and table.version == "ratings_ranker_features/1"
    rated = set(zip(inter.column("user_idx").to_pylist(), inter.column("item_idx").to_pylist()))
    f = table.features
    is_event = np.zeros(len(table), dtype=bool)
    # per request: one rated row (label = rating >= 4) + 2 never-rated items (label 0)
    pairs = list(zip(f["user"].tolist(), f["item"].tolist()))
    for r in range(len(table)):
        is_event[r] = pairs[r] in rated
    assert is_event.sum() >= n and (table.label[~is_event] == 0).all()
    assert table.label[is_event].mean() == pytest.approx((inter.column("value").to_numpy() >= 4).mean(), abs=0.05)
    # point in time: the popularity of an item counts only its strictly earlier ratings
    it, ts = inter.column("item_idx").to_numpy(), inter.column("timestamp").to_numpy()
    for r in range(0, len(table), 97):
        want = int(((it == f["item"][r]) & (ts < table.timestamp[r])).sum())
        assert np.expm1(f["item_log_pop"][r]) == pytest.approx(want, abs=1e-3)
    s = time_split(table, 0.1, 0.1)
    assert table.timestamp[s["train"]].max() < table.timestamp[s["test"]].min()
