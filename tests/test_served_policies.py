"""Target policies from tiny real `recsys train` runs (SASRec, two-tower): the
policy's slates are the run's own scores, `recsys ope` estimates them on the
world's log beside the truth, and a run whose vocabulary does not match the log
is refused in one line."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.artifacts.embeddings import read_item_embeddings, read_seen, read_user_embeddings
from recsys.data.prepare import prepare
from recsys.data.splits import LeaveOneOut
from recsys.data.synthetic_source import SyntheticLoader, load_world
from recsys.ope import EstimatorOptions, build_log_setup, build_policy, build_setup, evaluate_policy
from recsys.ope.served_policies import run_policy
from recsys.utils.errors import RecsysError
from tests.helpers import ROOT, run

N_USERS, N_ITEMS = 200, 60
TINY = [f"data.n_users={N_USERS}", f"data.n_items={N_ITEMS}", "data.loader.n_requests=3000", "~logger",
        "trainer.enable_progress_bar=false", "trainer.max_epochs=1", "callbacks.early_stopping=null"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A SASRec and a two-tower run (`recsys train`, forked from the tests' fork server), sharing a data cache."""
    root = tmp_path_factory.mktemp("runs")
    cache = root / "cache"
    prepare(SyntheticLoader(n_users=N_USERS, n_items=N_ITEMS, n_requests=3000), cache, "synthetic",
            event_types=["click"])  # prepared once, so the two trainings only read it
    for name, exp, extra in (("sasrec", "sasrec_synthetic", ["datamodule.max_len=20", "net.hidden=16"]),
                             ("two_tower", "two_tower_synthetic", [])):
        r = run("train", f"experiment={exp}", *TINY, *extra, f"paths.cache_dir={cache}", f"hydra.run.dir={root / name}",
                cwd=root)
        assert r.returncode == 0, (name, r.stderr[-3000:])
    return {"sasrec": root / "sasrec", "two_tower": root / "two_tower", "cache": cache}


@pytest.fixture(scope="module")
def setup(runs):
    data = prepare(SyntheticLoader(n_users=N_USERS, n_items=N_ITEMS, n_requests=3000), runs["cache"], "synthetic",
                   event_types=["click"])
    world = load_world(data.extras_dir, data.extras)
    return build_setup(data, LeaveOneOut(2, 3).split(data), world, None)


@pytest.mark.parametrize("name", ["sasrec", "two_tower"])
def test_run_policy_serves_the_runs_own_top_k_and_ope_estimates_it_beside_the_truth(runs, setup, name):
    run = runs[name]
    pol, info = build_policy(setup, partial(run_policy, run=str(run)), seed=0)
    users = setup.log.users[:50]
    p = pol.probs(users)  # (b, K, M)
    assert p.shape == (50, setup.slate_size, setup.n_actions)
    assert np.allclose(p.sum(axis=2), 1.0)
    # the slate is the run's own ranking: user state . item vector, seen items excluded
    items, ustates = read_item_embeddings(run), read_user_embeddings(run)
    seen_u, seen_i = read_seen(run)
    iv, uv = items.vectors.astype(np.float64), ustates.vectors.astype(np.float64)
    if items.meta["metric"] == "cos":
        iv /= np.linalg.norm(iv, axis=1, keepdims=True)
        uv /= np.linalg.norm(uv, axis=1, keepdims=True)
    row = {u: r for r, u in enumerate(ustates.ids.tolist())}
    for b, u in enumerate(users[:10].tolist()):
        uid = str(setup.log.user_ids[u])
        sc = uv[row[uid]] @ iv.T
        sc[np.isin(items.ids, seen_i[seen_u == uid])] = -np.inf
        want = items.ids[np.argsort(-sc, kind="stable")[: setup.slate_size]]
        got = [str(setup.log.item_ids[j]) for j in p[b].argmax(axis=1)]
        assert got == want.tolist()
    out = evaluate_policy(setup, pol, info, EstimatorOptions(n_bootstrap=0, refit_bootstrap=False), seed=0)
    assert 0 < out["true_value"] < setup.slate_size
    assert all(np.isfinite(r["estimate"]) for r in out["estimates"].values())
    # softmax mode: a stochastic policy over the same scores
    soft, _ = build_policy(setup, partial(run_policy, run=str(run), mode="softmax", temperature=0.5), seed=0)
    ps = soft.probs(users[:5])
    assert np.allclose(ps.sum(axis=2), 1.0) and (ps > 0).sum(axis=2).min() > 1


def test_policy_config_run_composes_and_builds(runs, setup):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(ROOT / "recsys" / "configs"), version_base=None):
        cfg = compose("ope", overrides=["policy=run", f"policy.run={runs['sasrec']}", "policy.mode=softmax"])
        bundle = compose("ope", overrides=["policy=bundle"])
    pol, _ = build_policy(setup, instantiate(cfg.policy), seed=0)
    assert pol.probs(setup.log.users[:3]).shape[1] == setup.slate_size
    with pytest.raises(RecsysError, match="policy=bundle needs policy.serve="):
        instantiate(bundle.policy)(setup, 0)
    with pytest.raises(RecsysError, match="policy=run needs policy.run="):
        run_policy(setup, 0, run=None)


def _log(path: Path, items: list[str], users: list[str]) -> Path:
    n = len(items)
    pq.write_table(pa.table({"request_id": list(range(n)), "user_id": users, "timestamp": [1.0] * n,
                             "position": [0] * n, "item_id": items, "click": [i % 2 for i in range(n)],
                             "propensity": [0.5] * n, "logging_policy": ["x"] * n}), path)
    return path


def test_a_run_whose_vocabulary_does_not_match_the_log_is_refused(runs, tmp_path):
    from recsys.data.bandit_logs import LogOptions
    from recsys.ope.setup import read_log_only

    ok = build_log_setup(read_log_only(_log(tmp_path / "ok.parquet", ["1", "2", "3", "4"], ["1", "2", "3", "4"]),
                                       LogOptions()))
    assert run_policy(ok, 0, run=str(runs["sasrec"])).probs(ok.log.users[:2]).shape[0] == 2
    bad_item = build_log_setup(read_log_only(_log(tmp_path / "i.parquet", ["1", "2", "999", "4"], ["1", "2", "3", "4"]),
                                             LogOptions()))
    with pytest.raises(RecsysError, match=r"item '999' of the log's action set .* not in the run's item vocabulary"):
        run_policy(bad_item, 0, run=str(runs["sasrec"]))
    bad_user = build_log_setup(read_log_only(_log(tmp_path / "u.parquet", ["1", "2", "3", "4"], ["1", "2", "x9", "4"]),
                                             LogOptions()))
    with pytest.raises(RecsysError, match="user 'x9' of the log has no query state"):
        run_policy(bad_user, 0, run=str(runs["two_tower"]))
    with pytest.raises(RecsysError, match="not a `recsys train` run directory"):
        run_policy(ok, 0, run=str(tmp_path))
