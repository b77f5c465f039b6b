"""recsys.ope as a library: every configs/policy option builds a valid policy on a
tiny setup, one estimate end to end, and the package stays free of the CLI."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from recsys.cli.config import config_dir
from recsys.data.prepare import prepare
from recsys.data.splits import LeaveOneOut
from recsys.data.synthetic_source import SyntheticLoader, load_world
from recsys.evaluation.ope_report import policy_report
from recsys.ope import EstimatorOptions, build_policy, build_setup, evaluate_policy

# `random` is a retired name (refused), `table` needs a file (tests/test_ope_real_logs.py)
POLICIES = sorted(p.stem for p in (config_dir() / "policy").glob("*.yaml") if p.stem not in ("random", "table", "run", "bundle"))  # run, bundle: test_served_policies


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = prepare(SyntheticLoader(n_users=150, n_items=60, n_requests=300), tmp_path_factory.mktemp("cache"), "syn",
                   event_types=["click"])
    return build_setup(data, LeaveOneOut().split(data), load_world(data.extras_dir, data.extras))


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_config_builds_a_distribution(setup, name):
    make = instantiate(OmegaConf.load(config_dir() / "policy" / f"{name}.yaml"))
    pol, info = build_policy(setup, make, seed=0, warmup_requests=200, warmup_batch_size=50)
    assert ("warmup_regret_per_request" in info) == hasattr(pol, "update")
    users = setup.log.users[:7]
    p = pol.probs(users)
    b, k, m = p.shape  # users, positions, actions
    assert (b, k, m) == (7, setup.slate_size, setup.n_actions)
    assert np.allclose(p.sum(axis=-1), 1.0) and np.all(p[..., 0] == 0) and np.all(p >= 0)


def test_retired_random_name_is_refused_with_a_pointer(setup):
    from recsys.utils.errors import RecsysError

    make = instantiate(OmegaConf.load(config_dir() / "policy" / "random.yaml"))
    with pytest.raises(RecsysError, match="policy=random is no longer.*policy=uniform.*policy=random_topk"):
        build_policy(setup, make, seed=0)


def test_evaluate_policy_end_to_end(setup, tmp_path):
    make = instantiate(OmegaConf.load(config_dir() / "policy" / "softmax_markov.yaml"))
    pol, info = build_policy(setup, make, seed=0)
    out = evaluate_policy(setup, pol, {"policy": "softmax_markov", **info}, EstimatorOptions(n_bootstrap=30), 0,
                          tmp_path / "ope.png")
    assert out["true_value"] > 0 and set(out["estimates"]) == {"DM", "IPS", "SNIPS", "DR", "SNDR", "SwitchDR"}
    assert all(e["ci_low"] <= e["estimate"] <= e["ci_high"] for e in out["estimates"].values())
    assert (tmp_path / "ope.png").stat().st_size > 0
    text = policy_report(out)
    assert text.startswith("policy softmax_markov on 300 requests") and "SwitchDR" in text


def test_ope_package_imports_no_cli_or_config_library():
    code = ("import sys, recsys.ope; bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('hydra', 'omegaconf', 'torch') or m.startswith('recsys.cli')); print(bad); assert not bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
