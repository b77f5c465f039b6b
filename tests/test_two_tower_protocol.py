"""Two-tower vs baselines on a temporal split: the same data to fit on and the
same history at test time; user-id dropout (users first seen after training)."""
from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as L
import torch

from recsys.data.splits import TemporalSplit
from recsys.models.two_tower import TowerArch, TwoTower
from recsys.training.baselines import EvalOptions, evaluate_split
from recsys.training.sequence.data import left_pad
from recsys.training.two_tower.data import FeatureSpec, LoaderSpec, TwoTowerDataModule
from recsys.training.two_tower.fit import fit
from recsys.training.two_tower.module import TwoTowerModule
from recsys.utils.sparse import CSR
from tests.helpers import prepared


NO_FEATURES = FeatureSpec(item_categorical=[], item_multi_hot=[], user_categorical=[])


class _Spy:
    """A baseline that records what ``evaluate_split`` fits it on and the history it scores with."""

    def fit(self, users, items, n_users, n_items):
        self.fit_pairs = list(zip(users.tolist(), items.tolist()))
        self.n_items, self.seen = n_items, {}
        return self

    def score(self, users, history):
        for r, u in enumerate(users.tolist()):
            self.seen[u] = history.row(r).tolist()
        return np.zeros((len(users), self.n_items + 1), dtype=np.float32)


@pytest.fixture(scope="module")
def temporal():
    rng = np.random.default_rng(0)
    rows = [(f"u{rng.integers(30)}", f"i{rng.integers(40)}", float(rng.integers(0, 1000))) for _ in range(1500)]
    data = prepared(rows)
    return data, TemporalSplit(val_fraction=0.2, test_fraction=0.2).split(data)


def test_two_tower_fits_on_and_sees_the_same_data_as_the_baselines(temporal):
    data, split = temporal
    spy = _Spy()
    evaluate_split(spy, data, split, EvalOptions(item_category_column=None, device="cpu"))
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        use_distributed_sampler=False, num_sanity_val_steps=0, enable_model_summary=False,
                        accelerator="cpu", devices=1)
    max_history = 8
    dm = TwoTowerDataModule(data, split, max_history, NO_FEATURES, LoaderSpec(batch_size=64))
    mod = TwoTowerModule(TwoTower(**dm.net_args(), arch=TowerArch(dim=8, hidden=16, pooling="attention")),
                         lambda p: torch.optim.AdamW(p, lr=1e-3))
    fit(trainer, mod, dm, data, split, category_column=None)
    # fit data: the same interactions, all before the validation cut-off
    tt_pairs = list(zip(dm.train_set.users.tolist(), dm.train_set.pos.tolist()))
    assert tt_pairs == spy.fit_pairs
    _, _, ts = split.train_arrays()
    assert ts.max() < split.info["t_val"]
    # test-time history: what the user tower receives is the tail of what the baselines score with
    seen_by_tower: list[list[int]] = []  # one process, rows in order
    user_vectors = mod.net.user_vectors

    def recording(user_idx, history, feats, item_vecs):
        seen_by_tower.extend(history.tolist())
        return user_vectors(user_idx, history, feats, item_vecs)

    mod.net.user_vectors = recording
    trainer.test(mod, datamodule=dm, verbose=False)
    es = split.test
    rows = [spy.seen[int(u)] for u in es.users]
    expected = CSR.from_sorted_rows(np.repeat(np.arange(len(rows)), [len(r) for r in rows]),
                                    np.asarray([x for r in rows for x in r], dtype=np.int64), len(rows))
    assert seen_by_tower == left_pad(expected, max_history).tolist()
    # ... and that history includes the validation-period events (not only training events)
    u_all, i_all, t_all = data.arrays()
    n_val_period = sum(int(((u_all == u) & (t_all >= split.info["t_val"]) & (t_all < split.info["t_test"])).sum())
                       for u in es.users)
    assert n_val_period > 0
    assert sum(len(spy.seen[int(u)]) for u in es.users) == sum(
        int(((u_all == u) & (t_all < split.info["t_test"])).sum()) for u in es.users)


@pytest.mark.parametrize("user_id_dropout", [0.0, 1.0])
def test_user_id_dropout_hides_user_ids_in_training(temporal, user_id_dropout):
    data, split = temporal
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        use_distributed_sampler=False, num_sanity_val_steps=0, enable_model_summary=False,
                        limit_val_batches=0, accelerator="cpu", devices=1)
    dm = TwoTowerDataModule(data, split, max_history=8, features=NO_FEATURES, loader=LoaderSpec(batch_size=64))
    net = TwoTower(**dm.net_args(), arch=TowerArch(dim=8, hidden=16))
    before = net.user_tower.features.id_emb.weight.detach().clone()
    mod = TwoTowerModule(net, lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.0),
                         user_id_dropout=user_id_dropout)
    trainer.fit(mod, datamodule=dm)
    changed = not torch.equal(before, net.user_tower.features.id_emb.weight.detach())
    assert changed == (user_id_dropout == 0.0)
    with pytest.raises(ValueError, match="user_id_dropout"):
        TwoTowerModule(net, lambda p: torch.optim.AdamW(p), user_id_dropout=1.5)


def test_temporal_preset_matches_the_study_settings():
    """configs/experiment/two_tower_ml100k_temporal.yaml = the settings scripts/two_tower_study.py
    uses for the temporal split (both chosen on validation, docs/two_tower.md)."""
    import importlib.util

    from hydra import compose, initialize_config_dir

    from tests.helpers import ROOT

    spec = importlib.util.spec_from_file_location("two_tower_study", ROOT / "scripts" / "two_tower_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    s = study.settings("temporal")
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        cfg = compose("train", overrides=["experiment=two_tower_ml100k_temporal"])
    assert cfg.split._target_.endswith("TemporalSplit") and cfg.pipeline == "two_tower"
    dm = cfg.datamodule  # the study's settings are flat; the config nests the specs
    flat_dm = {"max_history": dm.max_history, **dm.features, **dm.loader}
    for part, node in (("net", cfg.net.arch), ("module", cfg.module), ("dm", flat_dm)):
        for k, v in s[part].items():
            assert node[k] == v, (part, k)
    assert cfg.module.optimizer.lr == s["opt"]["lr"] and cfg.trainer.max_epochs == s["train"]["max_epochs"]
    assert cfg.callbacks.early_stopping.patience == s["train"]["patience"]
