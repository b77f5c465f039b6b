"""Every config composes and every ``_target_`` instantiates."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from recsys.cli.config import config_dir, register_resolvers
from recsys.cli.main import COMMANDS

CONFIGS = config_dir()
ROOT = Path(__file__).resolve().parents[1]  # the checkout: paths.root of every run
ROOTS = sorted({c.config for c in COMMANDS.values()})
# hparams_search holds Hydra sweeper settings, no _target_ (tests/test_sweeps.py composes it)
GROUPS = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir() and p.name not in ("hydra", "paths", "hparams_search"))

# groups whose options need a user-given path
NEEDS = {("data", "csv"): ["data.loader.path=x.csv"], ("data", "parquet"): ["data.loader.path=x.parquet"]}


def _compose(name: str, overrides: list[str] = ()) -> DictConfig:
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def _targets(node, path=""):
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
            return
        for k in node:
            yield from _targets(node[k], f"{path}.{k}" if path else str(k))


def test_every_command_has_a_root_config():
    for name in ROOTS:
        assert (CONFIGS / f"{name}.yaml").is_file(), name


@pytest.mark.parametrize("root", ROOTS)
def test_root_configs_compose(root):
    overrides = ["path=x", "format=seqtxt"] if root == "data_validate" else []
    cfg = _compose(root, overrides)
    assert cfg.paths.root == str(ROOT)


# which root config carries each group, and what an option needs to be built
ROOT_OF = {"data": "evaluate", "split": "evaluate", "model": "evaluate", "evaluation": "evaluate",
           "ranker": "rank_train", "index": "index_build", "features": "features_build", "policy": "ope",
           "registry": "registry"}
PARTIAL = {"datamodule", "module"}  # need objects (split, net) that only exist at run time
ARGS = {"net": {"n_items": 10}, "ranker": {"vocab_sizes": {"user": 5, "item": 7}, "dense_features": ["price_log"]}}


def _options():
    for g in GROUPS:
        for p in sorted((CONFIGS / g).glob("*.yaml")):
            yield g, p.stem


@pytest.mark.parametrize("group,option", list(_options()))
def test_every_group_option_instantiates(group, option, tmp_path):
    root = ROOT_OF.get(group, "train")
    cfg = _compose(root, [f"{group}={option}", f"paths.output_dir={tmp_path}", *NEEDS.get((group, option), [])])
    node = cfg if group == "experiment" else cfg[group]
    found = list(_targets(node, group)) if group != "experiment" else [("net", cfg.net), ("loss", cfg.loss)]
    assert found, f"{group}/{option} has no _target_"
    for path, sub in found:
        top = path.split(".")[0]
        if top in PARTIAL or (top == "trainer" and sub.get("accelerator") == "gpu"):
            obj = instantiate(sub, _partial_=True)
        else:
            obj = instantiate(sub, **ARGS.get(top, {}))
        assert obj is not None, path


def test_demo_models_instantiate():
    cfg = _compose("demo")
    names = []
    for name, node in cfg.models.items():
        model = instantiate(node)
        assert hasattr(model, "fit") and hasattr(model, "score")
        names.append(name)
    assert {"popularity", "random", "markov"} <= set(names)


def test_data_root_is_overridable(monkeypatch, tmp_path):
    monkeypatch.setenv("RECSYS_DATA_ROOT", str(tmp_path))
    cfg = _compose("evaluate", ["data=beauty"])
    assert OmegaConf.select(cfg, "data.loader.path") == f"{tmp_path}/amazon-beauty/Beauty.txt"
    cfg = _compose("evaluate", ["data=beauty", "paths.data_root=/elsewhere"])
    assert cfg.data.loader.path == "/elsewhere/amazon-beauty/Beauty.txt"
