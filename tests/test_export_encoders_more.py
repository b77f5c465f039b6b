"""Query-encoder export of BERT4Rec ([MASK] appended after the history) and GRU4Rec
(last GRU state): a tiny `recsys train` run -> `recsys export` -> bundle whose parity
passes, and the torch-free runtime's states and top-k equal torch's."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.artifacts.models import load_model
from recsys.export.encoders import ENCODERS
from recsys.serving.encoder import QueryEncoderRuntime
from recsys.utils.topk import top_k_excluding
from tests.helpers import run

MAX_LEN, N_ITEMS = 12, 90
TRAIN = ["data.n_users=400", f"data.n_items={N_ITEMS}", f"datamodule.max_len={MAX_LEN}", "net.hidden=16",
         "~logger", "trainer.enable_progress_bar=false", "trainer.max_epochs=1",
         "+trainer.limit_train_batches=3"]
EXPORT = ["encoder.min_users=300", f"encoder.lengths=[1,4,{MAX_LEN}]"]
CLASSES = {"bert4rec": "recsys.models.bert4rec.BERT4Rec", "gru4rec": "recsys.models.gru4rec.GRU4Rec"}


@pytest.fixture(scope="module", params=sorted(CLASSES))
def exported(request, tmp_path_factory) -> tuple[str, Path, Path]:
    """``(model, run dir, bundle dir)``: 1 epoch on the synthetic preset, then `recsys export`."""
    name = request.param
    base = tmp_path_factory.mktemp(name)
    env = {"OMP_NUM_THREADS": "1", "RECSYS_EXPORT_DIR": str(base / "export")}
    r = run("train", f"experiment={name}_synthetic", *TRAIN, f"paths.cache_dir={base / 'cache'}",
            f"hydra.run.dir={base / 'run'}", cwd=base, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run("export", f"run={base / 'run'}", "name=query", *EXPORT, f"hydra.run.dir={base / 'job'}", cwd=base, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "top-10 identical" in r.stdout
    return name, base / "run", base / "export" / "query"


def _histories(n: int, length: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(1, N_ITEMS + 1, (n, length))
    for r in range(n):  # varied real lengths (>= 1 item), left-padded
        x[r, : int(rng.integers(0, length))] = 0
    return x


def _reference_states(name: str, net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """What the encoder means, from the net's own methods (not the export wrapper):
    BERT4Rec, the state at a [MASK] after every given item (``next_item_state`` drops
    the oldest column: give it one pad more); GRU4Rec, the state after the last item
    at the request's own length."""
    seq = torch.from_numpy(np.pad(x, ((0, 0), (1, 0))) if name == "bert4rec" else x)
    with torch.no_grad():
        return net.next_item_state(seq).numpy()


def test_bundle_manifest_and_parity(exported):
    name, run_dir, bundle = exported
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["kind"] == "query_encoder" and m["model"]["class"] == CLASSES[name]
    assert m["model"]["description"] == ENCODERS[CLASSES[name]].description
    # BERT4Rec's position table holds the history and the appended [MASK]
    assert m["inputs"][0]["max_len"] == (MAX_LEN - 1 if name == "bert4rec" else MAX_LEN)
    assert m["inputs"][0]["vocab_size"] == N_ITEMS + 1 and m["item_embeddings"]["shape"] == [N_ITEMS + 1, 16]
    p = m["parity"]
    assert p["users"] >= 300 and p["max_abs_diff"] <= 1e-5 and p["min_topk_agreement"] >= 0.999
    assert p["lengths"] == sorted({1, 4, m["inputs"][0]["max_len"]})
    summary = json.loads((run_dir / "summary.json").read_text())
    assert m["embedding_version"].startswith(summary["model"].split("/")[0] + "/")


@pytest.mark.parametrize("length", [1, 5, MAX_LEN - 1])
def test_runtime_states_and_top_k_equal_torch(exported, length):
    name, run_dir, bundle = exported
    net = load_model(run_dir / "model").eval()
    rt = QueryEncoderRuntime(bundle)
    x = _histories(60, length, length)
    state = _reference_states(name, net, x)
    np.testing.assert_allclose(rt.encode(x), state, atol=1e-5, rtol=0)
    with torch.no_grad():
        scores = (torch.from_numpy(state) @ net.output_embeddings().T).numpy()
    ids, vals = rt.top_k(x, k=10)
    want = top_k_excluding(scores, x, 10)
    assert ids.shape == vals.shape == (60, 10) and np.all(ids == want, axis=1).mean() >= 0.99
    for r in range(60):
        assert not set(ids[r]) & (set(x[r]) | {0})


def test_single_item_is_read_and_long_histories_match_evaluation(exported):
    """A one-item history is encoded from that item (BERT4Rec does not drop it for the
    [MASK]); a history longer than the bundle's max_len gives what the training run's
    evaluation scores (``score_sequences``: the last ``net.max_len`` columns)."""
    name, run_dir, bundle = exported
    net = load_model(run_dir / "model").eval()
    rt = QueryEncoderRuntime(bundle)
    one = rt.encode(np.array([[7], [8]]))
    assert np.abs(one[0] - one[1]).max() > 1e-4  # the item changes the state
    long = np.random.default_rng(0).integers(1, N_ITEMS + 1, (3, 3 * MAX_LEN))
    with torch.no_grad():
        want = net.next_item_state(torch.from_numpy(long[:, -net.max_len:])).numpy()
    np.testing.assert_allclose(rt.encode(long), want, atol=1e-5, rtol=0)
