"""``module.compile=true``: the net's forward is ``torch.compile``d inside the Lightning
module; a tiny SASRec trained one epoch gives the eager run's val/test metrics.

Dropout is off for the comparison: inductor draws its own random numbers, so with
dropout a compiled run is a different (equally valid) sample of the training noise."""
from __future__ import annotations

import json

import pytest

from tests.helpers import run

TINY = ["experiment=sasrec_synthetic", "data.n_users=200", "data.n_items=60", "datamodule.max_len=10",
        "net.hidden=16", "net.dropout=0", "net.attn_dropout=0", "~logger", "trainer.enable_progress_bar=false",
        "trainer.max_epochs=1"]


@pytest.mark.slow  # ~45 s of torch.compile on 2 cores
@pytest.mark.timeout(300)
def test_compiled_training_matches_eager(tmp_path):
    metrics = {}
    for compile_ in ("false", "true"):
        out = tmp_path / f"compile_{compile_}"
        res = run("train", *TINY, f"module.compile={compile_}", f"paths.cache_dir={tmp_path / 'cache'}",
                  f"hydra.run.dir={out}", cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        s = json.loads((out / "summary.json").read_text())
        assert s["config"]["module"]["compile"] is (compile_ == "true")
        metrics[compile_] = {k: v for k, v in s.items() if k.startswith(("val/", "test/"))}
    eager, compiled = metrics["false"], metrics["true"]
    assert set(eager) == set(compiled) and any(k.startswith("val/") for k in eager)
    for k in eager:
        assert compiled[k] == pytest.approx(eager[k], abs=1e-5), k


def test_compile_flag_compiles_the_net_in_place():
    """Parameter names (checkpoints, the saved model) are those of the eager net."""
    import torch

    from recsys.models.sequential import SASRec
    from recsys.training.losses import FullSoftmaxCE
    from recsys.training.sequence.module import SequentialRecModule

    eager = SequentialRecModule(SASRec(20, max_len=5, hidden=8), FullSoftmaxCE(), torch.optim.Adam)
    compiled = SequentialRecModule(SASRec(20, max_len=5, hidden=8), FullSoftmaxCE(), torch.optim.Adam,
                                   compile=True, compile_backend="aot_eager")
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert type(compiled.net) is SASRec and compiled.net._compiled_call_impl is not None
    assert eager.net._compiled_call_impl is None
