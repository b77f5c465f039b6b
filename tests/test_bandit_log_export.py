"""`recsys ope regret regret.log_dir=<dir>` writes every simulated policy's interactions in
the logged-feedback format, and `recsys ope logs=<file>` reads them back: the on-policy
estimate of the logging policy is its realised mean reward, and the logged propensities
are the policies' real probabilities (replayed exactly for Thompson sampling)."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recsys.cli.config import config_dir
from recsys.data.bandit_logs import read_bandit_log
from recsys.data.prepare import prepare
from recsys.data.splits import LeaveOneOut
from recsys.data.synthetic_source import SyntheticLoader, load_world
from recsys.ope import build_setup, run_regret
from recsys.utils.errors import RecsysError
from tests.helpers import ROOT, run

SMALL = ["data.n_users=150", "data.n_items=60", "data.loader.n_requests=400"]


@pytest.fixture(scope="module")
def regret_logs(tmp_path_factory):
    """One CLI regret run with uniform, epsilon-greedy and Thompson sampling, logs written."""
    base = tmp_path_factory.mktemp("regret")
    res = run("ope", "regret", "regret.n_requests=1000", "regret.batch_size=100",
              "regret.policies=[uniform,epsilon_greedy,bernoulli_ts]", f"regret.log_dir={base / 'logs'}",
              f"hydra.run.dir={base / 'run'}", f"paths.cache_dir={base / 'cache'}", *SMALL, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    return base


def test_regret_writes_one_log_per_policy(regret_logs):
    summary = json.loads((regret_logs / "run" / "summary.json").read_text())
    logs = summary["logs"]
    assert sorted(logs) == ["bernoulli_ts", "epsilon_greedy", "uniform"]
    for name, info in logs.items():
        log = read_bandit_log(info["path"])  # the documented format, default options
        assert log.n_requests == 1000 and log.slate_size == 5 and log.logging_policies == [name]
        assert info["clicks_per_request"] == pytest.approx(log.rewards.sum(axis=1).mean())
    assert not [p for p in (regret_logs / "logs").iterdir() if p.name.startswith(".")]  # no temp left


@pytest.mark.parametrize("name", ["uniform", "epsilon_greedy"])
def test_on_policy_estimate_is_the_realised_reward(regret_logs, name, tmp_path):
    """The logging policy evaluated on its own log: every weight 1, IPS = SNIPS = realised clicks."""
    path = regret_logs / "logs" / f"{name}.parquet"
    res = run("ope", f"logs={path}", "data=synthetic", f"policy={name}", "ope.n_bootstrap=10",
              f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={regret_logs / 'cache'}", *SMALL, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads((tmp_path / "run" / "summary.json").read_text())
    t = pq.read_table(path)
    realised = t.column("click").to_numpy().sum() / 1000
    assert out["logged_value"] == pytest.approx(realised)
    for est in ("IPS", "SNIPS"):
        assert out["estimates"][est]["estimate"] == pytest.approx(realised, abs=1e-9), est


def test_epsilon_greedy_propensities_are_its_probabilities(regret_logs):
    """epsilon = 0.1 over 60 items: the greedy item has 0.9 + 0.1/60, every other 0.1/60."""
    p = pq.read_table(regret_logs / "logs" / "epsilon_greedy.parquet").column("propensity").to_numpy()
    explore, greedy = 0.1 / 60, 0.9 + 0.1 / 60
    assert np.all(np.isclose(p, explore) | np.isclose(p, greedy))
    assert 0.04 < np.isclose(p, explore).mean() < 0.2  # about epsilon * 59/60 of the rows explore
    assert not np.all(p == 1.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = prepare(SyntheticLoader(n_users=150, n_items=60, n_requests=300), tmp_path_factory.mktemp("cache"), "syn",
                   event_types=["click"])
    return build_setup(data, LeaveOneOut().split(data), load_world(data.extras_dir, data.extras))


def test_thompson_propensities_replay_exactly(setup, tmp_path):
    """Replaying the logged batches through a fresh Thompson sampler (same seed, same updates)
    gives back every logged propensity: they are the policy's own probabilities, not 1.0."""
    make = instantiate(OmegaConf.load(config_dir() / "policy" / "bernoulli_ts.yaml"))
    batch = 50
    out = run_regret(setup, {"ts": make}, n_requests=400, batch_size=batch, seed=3, log_dir=tmp_path / "logs")
    t = pq.read_table(out["logs"]["ts"]["path"])
    k = setup.slate_size
    user_index = {u: i for i, u in enumerate(setup.log.user_ids)}
    item_index = {j: i for i, j in enumerate(setup.log.item_ids)}
    users = np.array([user_index[u] for u in t.column("user_id").to_pylist()[::k]])
    actions = np.array([item_index[j] for j in t.column("item_id").to_pylist()]).reshape(-1, k)
    clicks = t.column("click").to_numpy().reshape(-1, k)
    logged = t.column("propensity").to_numpy().reshape(-1, k)
    pol = make(setup, 3)
    for s in range(0, len(users), batch):
        sl = slice(s, s + batch)
        p = pol.probs(users[sl])  # (b, K, M)
        np.testing.assert_allclose(logged[sl], np.take_along_axis(p, actions[sl, :, None], axis=2)[..., 0])
        pol.update(users[sl], actions[sl], clicks[sl])
    assert (logged < 1.0).mean() > 0.9 and np.all(logged > 0)


def test_log_dir_that_is_not_a_log_folder_is_refused(setup, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    make = instantiate(OmegaConf.load(config_dir() / "policy" / "uniform.yaml"))
    with pytest.raises(RecsysError, match="notes.txt"):
        run_regret(setup, {"uniform": make}, n_requests=50, batch_size=50, seed=0, log_dir=tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
