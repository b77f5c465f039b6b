"""Two-tower model: towers, loss (logQ, own-positive masking), cold start,
exact evaluation, the train pipeline and the embeddings contract."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import pytorch_lightning as L
import torch
import torch.nn.functional as F

from recsys.data.prepare import prepare
from recsys.data.splits import LeaveOneOut
from recsys.data.synthetic_source import SyntheticLoader
from recsys.evaluation.ranking import evaluate_ranking
from recsys.models.baselines import Popularity, RandomScores
from recsys.models.two_tower import ID, ItemInputs, TowerArch, TwoTower, UserInputs
from recsys.artifacts.models import load_model
from recsys.training.baselines import EvalOptions, evaluate_split
from recsys.training.sequence.data import left_pad
from recsys.training.two_tower.cold_start import (CategoryPopularity, cold_start_split, evaluate_cold,
                                                  item_category_lists)
from recsys.training.two_tower.data import FeatureTable, LoaderSpec, TwoTowerDataModule, history_matrix
from recsys.artifacts.embeddings import write_run_embeddings as write_embeddings
from recsys.training.two_tower.fit import fit
from recsys.training.two_tower.module import TwoTowerModule, in_batch_softmax_loss, own_positive_mask
from recsys.utils.errors import DataError
from tests.helpers import run

TINY = ["data.n_users=300", "data.n_items=100", "data.loader.n_requests=100", "datamodule.max_history=20",
        "net.arch.dim=32", "net.arch.hidden=64", "~logger", "trainer.enable_progress_bar=false"]


# ---- loss -----------------------------------------------------------------
def test_logq_correction_subtracts_log_frequency_from_every_logit():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    target = torch.arange(4)
    plain = in_batch_softmax_loss(u, v, target, temperature=0.5)
    # a constant correction (uniform item frequency) changes nothing
    assert in_batch_softmax_loss(u, v, target, 0.5, log_q=torch.full((4,), -3.0)) == pytest.approx(float(plain))
    log_q = torch.log(torch.tensor([0.7, 0.1, 0.1, 0.1]))
    corrected = in_batch_softmax_loss(u, v, target, 0.5, log_q=log_q)
    manual = F.cross_entropy(u @ v.T / 0.5 - log_q[None, :], target)
    assert float(corrected) == pytest.approx(float(manual), rel=1e-6)
    assert float(corrected) != pytest.approx(float(plain))
    # a popular negative is discounted: rows whose target is not item 0 get a lower loss
    per_row = lambda lq: F.cross_entropy(u @ v.T / 0.5 - (lq[None, :] if lq is not None else 0), target,  # noqa: E731
                                         reduction="none")
    assert (per_row(log_q)[1:] < per_row(None)[1:]).all()


def test_own_positives_are_masked_but_the_target_is_not():
    users = torch.tensor([1, 2, 1])
    cand = torch.tensor([5, 6, 7])  # in-batch positives
    keys = torch.tensor(sorted([1 * 11 + 5, 1 * 11 + 7, 2 * 11 + 6, 2 * 11 + 5]))
    target = torch.arange(3)
    mask = own_positive_mask(users, cand, keys, 10, target)
    expected = torch.tensor([[False, False, True], [True, False, False], [True, False, False]])
    assert torch.equal(mask, expected)
    dense = torch.zeros(3 * 11, dtype=torch.bool)
    dense[keys] = True
    assert torch.equal(own_positive_mask(users, cand, keys, 10, target, dense.view(3, 11)), expected)
    # a masked candidate does not influence the loss at all
    u, v = torch.randn(3, 4), torch.randn(3, 4)
    v2 = v.clone()
    v2[2] += 100.0  # item 7 of row 0 is user 1's own positive: masked for row 0
    l1 = F.cross_entropy((u @ v.T).masked_fill(mask, float("-inf"))[:1], target[:1])
    l2 = F.cross_entropy((u @ v2.T).masked_fill(mask, float("-inf"))[:1], target[:1])
    assert float(l1) == pytest.approx(float(l2))


def test_history_matrix_is_left_padded_previous_items():
    users = np.array([1, 1, 1, 2, 2])
    items = np.array([10, 11, 12, 20, 21])
    h = history_matrix(users, items, 2)
    assert h.tolist() == [[0, 0], [0, 10], [10, 11], [0, 0], [0, 20]]


# ---- towers and cold start ------------------------------------------------------
def _item_table():
    return pa.table({"item_idx": pa.array([1, 2, 3], pa.int32()), "item_id": ["a", "b", "c"],
                     "genre": ["x", "y", "x"], "tags": [["t1", "t2"], ["t2"], ["t1"]]})


def test_cold_item_gets_a_nonzero_vector_from_its_features_only():
    known = np.array([False, True, True, False])  # item 3 ('c') never in training
    ft = FeatureTable(_item_table(), "item_id", known, ["genre"], ["tags"], n_buckets=64)
    assert int(ft.tensors[ID][3]) == 0 and int(ft.tensors[ID][1]) > 0  # no id for the cold item
    assert ft.vocab == {"genre": ["x", "y"], "tags": ["t1", "t2"]}
    ic, im = ft.sizes()
    torch.manual_seed(0)
    net = TwoTower(3, ItemInputs(n_id_buckets=64, categorical=ic, multi_hot=im), arch=TowerArch(dim=8, hidden=16))
    v = net.item_vectors(ft.tensors)
    assert v[3].abs().sum() > 0
    # the cold vector is a function of the features: other features, other vector
    feats = {k: t.clone() for k, t in ft.tensors.items()}
    feats["genre"][3] = 2
    assert not torch.allclose(net.item_vectors(feats)[3], v[3])
    # values seen only on cold items are unknown (0)
    ft2 = FeatureTable(_item_table(), "item_id", np.array([False, True, False, False]), ["genre"], [], 64)
    assert ft2.vocab["genre"] == ["x"] and int(ft2.tensors["genre"][2]) == 0


def test_bad_feature_columns_are_data_errors():
    with pytest.raises(DataError, match="feature column 'nope'"):
        FeatureTable(_item_table(), "item_id", np.ones(4, bool), ["nope"], [], 16)
    with pytest.raises(DataError, match="must be a list column"):
        FeatureTable(_item_table(), "item_id", np.ones(4, bool), [], ["genre"], 16)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_user_vectors_depend_on_history_and_ignore_padding(pooling):
    torch.manual_seed(0)
    net = TwoTower(5, ItemInputs(n_id_buckets=32), UserInputs(n_id_buckets=8, categorical={"g": 3}, max_history=4),
                   TowerArch(dim=8, hidden=16, pooling=pooling))
    item_vecs = torch.randn(6, 8)
    item_vecs[0] = 0
    uid, feats = torch.tensor([1, 1]), {"g": torch.tensor([1, 1])}
    a = net.user_vectors(uid, torch.tensor([[0, 0, 1, 2], [0, 0, 3, 4]]), feats, item_vecs)
    assert not torch.allclose(a[0], a[1])
    # more left padding (a shorter window of the same items) gives the same vector
    b = net.user_vectors(uid[:1], torch.tensor([[0, 0, 0, 0, 1, 2]]), feats | {"g": feats["g"][:1]},
                         torch.cat([item_vecs]))
    assert torch.allclose(a[0], b[0], atol=1e-6) if pooling == "mean" else b.isfinite().all()
    # empty history still gives a finite vector (from id and features)
    assert net.user_vectors(uid[:1], torch.zeros(1, 4, dtype=torch.long), {"g": torch.tensor([2])},
                            item_vecs).isfinite().all()


def test_specs_rebuild_from_model_args_and_refuse_unknown_options():
    inputs = dict(items=ItemInputs(n_id_buckets=16, multi_hot={"tags": 4}),
                  users=UserInputs(n_id_buckets=8, categorical={"g": 3}, max_history=6),
                  arch=TowerArch(dim=8, hidden=16, pooling="attention", normalize=True))
    torch.manual_seed(0)
    net = TwoTower(7, **inputs)
    args = json.loads(json.dumps(net.model_args()))  # what model_args.json holds
    torch.manual_seed(0)
    again = TwoTower(**args)  # plain dicts, as rebuild_net passes them
    assert again.model_args() == args and again.max_history == 6 and again.normalize
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    assert list(net.state_dict()) == list(again.state_dict())
    with pytest.raises(TypeError, match=r"arch: unknown option\(s\) \['dimm'\]"):
        TwoTower(7, arch={"dimm": 8})
    # no ids and no features: the item tower falls back to hashed ids (2 n + 1 buckets)
    assert TwoTower(7).item_tower.features.id_emb.num_embeddings == 16


# ---- training + exact evaluation on synthetic data ------------------------------
@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    data = prepare(SyntheticLoader(n_users=300, n_items=100, n_requests=100), cache, "syn", event_types=["click"])
    return data, LeaveOneOut().split(data)


def _fit(data, split, epochs=8, seed=0, **module_kw):
    L.seed_everything(seed, verbose=False)
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        use_distributed_sampler=False, num_sanity_val_steps=0, enable_model_summary=False,
                        check_val_every_n_epoch=1000)
    dm = TwoTowerDataModule(data, split, max_history=20, loader=LoaderSpec(batch_size=128, seed=seed))
    net = TwoTower(**dm.net_args(), arch=TowerArch(dim=32, hidden=64))
    mod = TwoTowerModule(net, lambda p: torch.optim.AdamW(p, lr=3e-3), seed=seed, **module_kw)
    return fit(trainer, mod, dm, data, split), trainer, mod, dm


def test_tiny_run_beats_popularity_and_eval_is_batch_size_invariant(syn):
    data, split = syn
    info, trainer, mod, dm = _fit(data, split)
    pop = evaluate_split(Popularity(), data, split, EvalOptions(item_category_column=None, device="cpu"))
    assert info["metrics"]["test/ndcg@10"] > pop["test/ndcg@10"] + 0.02
    assert info["metrics"]["test/recall@20"] > pop["test/recall@20"]
    results = []
    for bs in (1, 13, 4096):
        dm.eval_batch_size = bs
        trainer.test(mod, datamodule=dm, verbose=False)
        results.append(mod.results["test"])
    assert results[0] == results[1] == results[2]
    es = split.test
    mod.eval()
    pos = {int(u): r for r, u in enumerate(es.users)}
    ref = evaluate_ranking(lambda u, h: mod.score_histories(np.array([pos[int(x)] for x in u]), es),
                           es.users, es.history, es.targets, data.n_items, ks=(5, 10, 20), device="cpu", batch_size=17)
    assert ref.metrics["ndcg@10"] == pytest.approx(results[0]["test/ndcg@10"], abs=1e-12)


def test_cold_start_features_beat_random_on_withheld_items(syn):
    data, _ = syn
    cs = cold_start_split(data, LeaveOneOut(), fraction=0.2, seed=0)
    warm_items = cs.split.train_arrays()[1]
    assert not np.isin(warm_items, cs.cold_items).any() and len(cs.cold) > 0
    assert np.isin(cs.cold.targets.indices, cs.cold_items).all()
    _, _, mod, dm = _fit(cs.warm_data, cs.split, epochs=8, id_dropout=0.3)
    assert int(dm.items.tensors[ID][torch.as_tensor(cs.cold_items)].abs().sum()) == 0
    mod.eval()
    vecs = mod.all_item_vectors()
    assert (vecs[torch.as_tensor(cs.cold_items)].abs().sum(1) > 0).all()
    rows = {int(u): r for r, u in enumerate(cs.cold.users)}

    def score(users, history):
        h = left_pad(cs.cold.history.take(np.array([rows[int(u)] for u in users])), dm.max_history)
        return mod.user_vectors_for(users, h, vecs) @ vecs.T

    ks = (5, 10)  # 20 cold items: recall@20 among them would be 1 for everyone
    tt = evaluate_cold(score, cs, data.n_items, "cold", ks=ks, device="cpu")
    tu, ti, _ = cs.split.train_arrays()
    rnd = evaluate_cold(RandomScores(0).fit(tu, ti, data.n_users, data.n_items).score, cs, data.n_items, "cold",
                        ks=ks, device="cpu")
    cats = CategoryPopularity(item_category_lists(data, "category")).fit(tu, ti, data.n_users, data.n_items)
    catpop = evaluate_cold(cats.score, cs, data.n_items, "cold", ks=ks, device="cpu")
    assert tt["recall@5"] > rnd["recall@5"] + 0.1
    assert tt["recall@5"] > catpop["recall@5"]
    # only withheld items are ranked in 'cold' mode: a full-catalogue ranking is harder
    full = evaluate_cold(score, cs, data.n_items, "full", ks=ks, device="cpu")
    assert full["recall@5"] < tt["recall@5"]


def test_category_popularity_scores_by_category():
    m = CategoryPopularity([["a"], ["a", "b"], ["b"], []]).fit(np.array([1, 1, 2]), np.array([1, 2, 2]), 2, 4)
    # a: 1 + 2 interactions over 2 warm items = 1.5; b: 2 over 1 warm item (item 3 is cold) = 2
    assert m.scores.tolist() == pytest.approx([0, 1.5, 1.75, 2.0, 0])


# ---- export contract ------------------------------------------------------------
def test_write_embeddings_contract(tmp_path):
    out = write_embeddings(tmp_path / "emb", item_ids=["a", "b"], item_vectors=np.eye(2, 3, dtype=np.float32),
                           user_ids=["u"], user_vectors=np.ones((1, 3)), seen_user_ids=["u"], seen_item_ids=["a"],
                           metric="ip", data_fingerprint="fp", run="r", item_categories=["x", None])
    items = pq.read_table(tmp_path / "emb" / "items.parquet")
    assert items.schema.field("embedding").type == pa.list_(pa.float32(), 3)
    assert items.column("item_idx").type == pa.int64() and items.column("item_idx").to_pylist() == [1, 2]
    assert items.column("category").to_pylist() == ["x", None]
    assert json.loads((tmp_path / "emb" / "meta.json").read_text())["dim"] == 3 == out["dim"]
    with pytest.raises(DataError, match="metric"):
        write_embeddings(tmp_path / "bad", item_ids=["a"], item_vectors=np.ones((1, 2)), user_ids=["u"],
                         user_vectors=np.ones((1, 2)), seen_user_ids=[], seen_item_ids=[], metric="l2",
                         data_fingerprint="fp", run="r")
    assert not (tmp_path / "bad").exists()


# ---- the train command -----------------------------------------------------------
def test_train_two_tower_cli_writes_run_dir_model_and_embeddings(tmp_path):
    out = tmp_path / "run"
    res = run("train", "experiment=two_tower_synthetic", *TINY, "trainer.max_epochs=2",
              f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    for split in ("val", "test"):
        assert 0 < s[f"{split}/ndcg@10"] <= 1 and s[f"{split}/n_users"] == 300
    assert s["model"] == "TwoTower" and (out / "checkpoints" / "last.ckpt").is_file()
    net = load_model(out / "model")
    assert isinstance(net, TwoTower) and net.n_items == s["data"]["n_items"]
    feats = json.loads((out / "model" / "features.json").read_text())
    assert "category" in feats["items"]["vocab"]
    meta = json.loads((out / "embeddings" / "meta.json").read_text())
    assert meta["metric"] == "cos" and meta["model"] == "TwoTower" and meta["data_fingerprint"] == s["data"]["fingerprint"]
    items = pq.read_table(out / "embeddings" / "items.parquet")
    users = pq.read_table(out / "embeddings" / "users.parquet")
    seen = pq.read_table(out / "embeddings" / "seen.parquet")
    assert items.num_rows == s["data"]["n_items"] and users.num_rows == 300
    assert items.schema.field("embedding").type == pa.list_(pa.float32(), meta["dim"])
    assert seen.num_rows == s["split"]["n_train_interactions"]
    # the exported vectors reproduce the run's scores: rebuilt net on the saved features
    emb = np.stack(items.column("embedding").to_numpy(zero_copy_only=False))
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_train_rejects_unknown_pipeline(tmp_path):
    res = run("train", "experiment=two_tower_synthetic", *TINY, "pipeline=nope",
              f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert res.returncode == 2 and "unknown pipeline 'nope'" in res.stderr
