"""Sequence-model training: end to end, resume, DDP-exact evaluation, batch-size invariance."""
from __future__ import annotations

import json

import numpy as np
import pytest
import pytorch_lightning as L
import torch

from recsys.data.prepare import prepare
from recsys.data.splits import LeaveOneOut
from recsys.data.synthetic_source import SyntheticLoader
from recsys.models.baselines import Popularity
from recsys.evaluation.ranking import evaluate_ranking
from recsys.models.sequential import SASRec
from recsys.artifacts.models import load_model
from recsys.training.losses import FullSoftmaxCE
from recsys.training.sequence.batches import EvalBatch, MaskedBatch, SequenceBatch
from recsys.training.sequence.data import SequenceDataModule
from recsys.training.sequence.module import SequentialRecModule
from tests.helpers import run

TINY = ["data.n_users=400", "data.n_items=120", "datamodule.max_len=20", "net.hidden=32", "~logger",
        "trainer.enable_progress_bar=false"]


def _summary(path):
    return json.loads((path / "summary.json").read_text())


def test_train_end_to_end_writes_run_dir_and_rebuildable_model(tmp_path):
    out = tmp_path / "run"
    res = run("train", "experiment=sasrec_synthetic", *TINY, "trainer.max_epochs=3",
              f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    s = _summary(out)
    for split in ("val", "test"):
        assert 0 < s[f"{split}/ndcg@10"] <= 1 and s[f"{split}/n_users"] == 400
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / ".hydra" / "config.yaml").is_file()
    net = load_model(out / "model")
    assert isinstance(net, SASRec) and net.n_items == s["data"]["n_items"]
    # truncated weights are refused
    w = out / "model" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-10])
    with pytest.raises(ValueError, match="weights.safetensors: .*truncated or modified"):
        load_model(out / "model")


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    common = ["experiment=sasrec_synthetic", *TINY, "callbacks.early_stopping=null",
              f"paths.cache_dir={tmp_path / 'cache'}"]
    full, part, resumed = tmp_path / "full", tmp_path / "part", tmp_path / "resumed"
    assert run("train", *common, "trainer.max_epochs=4", f"hydra.run.dir={full}", cwd=tmp_path).returncode == 0
    assert run("train", *common, "trainer.max_epochs=2", f"hydra.run.dir={part}", cwd=tmp_path).returncode == 0
    res = run("train", *common, "trainer.max_epochs=4", f"resume={part / 'checkpoints' / 'last.ckpt'}",
              f"hydra.run.dir={resumed}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _summary(full), _summary(resumed)
    assert a["test/ndcg@10"] == b["test/ndcg@10"] and a["val/ndcg@10"] == b["val/ndcg@10"]
    from safetensors.torch import load_file

    wa, wb = load_file(str(full / "model" / "weights.safetensors")), load_file(str(resumed / "model" / "weights.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow  # covered in the default run by tests/test_sweeps.py's DDP test (trains, then the same equality)
def test_ddp_cpu_evaluation_equals_single_process(tmp_path):
    common = ["experiment=sasrec_synthetic", *TINY, "trainer.max_epochs=0", f"paths.cache_dir={tmp_path / 'cache'}"]
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = run("train", *common, f"hydra.run.dir={one}", cwd=tmp_path)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = run("train", *common, "trainer=ddp_cpu", f"hydra.run.dir={two}", cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr[-3000:]
    a, b = _summary(one), _summary(two)
    keys = [k for k in a if k.startswith(("val/", "test/"))]
    assert keys and all(a[k] == b[k] for k in keys)
    assert b["test/n_users"] == 400


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    data = prepare(SyntheticLoader(n_users=300, n_items=100, n_requests=100), cache, "syn", event_types=["click"])
    return data, LeaveOneOut().split(data)


def _fit(data, split, epochs, eval_bs=256, seed=0):
    L.seed_everything(seed, verbose=False)
    dm = SequenceDataModule(split, data.n_items, max_len=20, batch_size=64, eval_batch_size=eval_bs, seed=seed)
    net = SASRec(data.n_items, max_len=20, hidden=32, dropout=0.1)
    module = SequentialRecModule(net, FullSoftmaxCE(), lambda p: torch.optim.Adam(p, lr=3e-3), seed=seed)
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        use_distributed_sampler=False, num_sanity_val_steps=0, enable_model_summary=False,
                        check_val_every_n_epoch=1000)
    trainer.fit(module, datamodule=dm)
    return module, dm, trainer


def test_evaluation_identical_at_any_eval_batch_size(tiny_setup):
    data, split = tiny_setup
    module, dm, trainer = _fit(data, split, epochs=1)
    results = []
    for bs in (1, 7, 4096):
        dm.eval_batch_size = bs
        trainer.test(module, datamodule=dm, verbose=False)
        results.append(module.results["test"])
    assert results[0] == results[1] == results[2]
    # and equal to the standalone evaluator on the same scores
    es = split.test
    module.eval()
    ref = evaluate_ranking(lambda u, h: module.score_histories(np.arange(len(es))[np.isin(es.users, u)], es),
                           es.users, es.history, es.targets, data.n_items, ks=(5, 10, 20), device="cpu")
    assert ref.metrics["ndcg@10"] == pytest.approx(results[0]["test/ndcg@10"], abs=1e-12)


def test_sasrec_learns_the_planted_sequential_pattern(tiny_setup):
    data, split = tiny_setup
    module, dm, trainer = _fit(data, split, epochs=15)
    trainer.test(module, datamodule=dm, verbose=False)
    users, items, _ = split.train_arrays()
    pop = Popularity().fit(users, items, data.n_users, data.n_items)
    es = split.test
    pop_ndcg = evaluate_ranking(pop.score, es.users, es.history, es.targets, data.n_items, device="cpu").metrics["ndcg@10"]
    assert module.results["test"]["test/ndcg@10"] > 1.5 * pop_ndcg


def test_batches_are_typed_and_evaluation_batches_carry_what_scoring_needs(tiny_setup):
    data, split = tiny_setup
    dm = SequenceDataModule(split, data.n_items, max_len=20, batch_size=64, eval_batch_size=50)
    b = next(iter(dm.train_dataloader()))
    assert isinstance(b, SequenceBatch) and b.input.shape == b.labels.shape and len(b.to("cpu")) == 64
    masked = SequenceDataModule(split, data.n_items, max_len=20, task="masked", batch_size=64)
    assert isinstance(next(iter(masked.train_dataloader())), MaskedBatch)
    e = next(iter(dm.test_dataloader()))
    assert isinstance(e, EvalBatch) and len(e) == 50 and e.history.n_rows == e.targets.n_rows == 50
    assert e.to("cpu").history is e.history  # CSRs stay where they are; tensors move
    # scoring an evaluation batch needs no trainer and equals scoring the rows of the EvalSet
    torch.manual_seed(0)
    module = SequentialRecModule(SASRec(data.n_items, max_len=20, hidden=32), FullSoftmaxCE(), torch.optim.Adam)
    module.eval()
    assert torch.equal(module.score_sequences(e.seq, e.history), module.score_histories(e.rows.numpy(), split.test))
