"""`recsys train -m`: an Optuna sweep over the tiny synthetic world, the submitit
launchers, the sweep objective, and DDP training on 2 CPU processes (real steps,
gathered evaluation equal to a single-process evaluation of the saved weights)."""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from recsys.artifacts.models import load_model
from recsys.cli.config import config_dir
from tests.helpers import run

TINY = ["data.n_users=300", "data.n_items=80", "datamodule.max_len=12", "~logger", "trainer.enable_progress_bar=false",
        "trainer.max_epochs=1"]


def _summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def test_optuna_sweep_runs_trials_with_different_params_and_records_the_best(tmp_path):
    sweep = tmp_path / "sweep"
    r = run("train", "-m", "hparams_search=sasrec_optuna", "hydra.sweeper.n_trials=2", *TINY,
            f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
            env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    trials = [sweep / "0", sweep / "1"]
    params = []
    for t in trials:
        overrides = yaml.safe_load((t / ".hydra" / "overrides.yaml").read_text())
        params.append({o.split("=")[0]: o.split("=", 1)[1] for o in overrides if o.startswith(("module.", "net."))})
        assert _summary(t)["val/ndcg@10"] > 0 and (t / "model" / "weights.safetensors").is_file()
    assert set(params[0]) == {"module.optimizer.lr", "module.optimizer.weight_decay", "net.dropout",
                              "net.attn_dropout", "net.hidden", "net.n_layers"}
    assert params[0] != params[1]
    assert not (sweep / "2").exists()
    res = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert res["name"] == "optuna"
    values = [_summary(t)["val/ndcg@10"] for t in trials]  # the objective each trial returned
    best = max(range(2), key=lambda i: values[i])
    assert res["best_value"] == pytest.approx(values[best], abs=1e-12)
    assert {k: str(v) for k, v in res["best_params"].items()} == params[best]


@pytest.mark.parametrize("name,keys", [("sasrec_optuna", "net.hidden"), ("two_tower_optuna", "net.arch.dim")])
def test_hparams_search_configs_compose_and_search_existing_keys(name, keys):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from recsys.cli.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"hparams_search={name}"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.optimized_metric == "val/ndcg@10"
    assert cfg.hydra.sweeper.direction == "maximize" and keys in cfg.hydra.sweeper.params
    for key in cfg.hydra.sweeper.params:  # every searched knob is a key of the composed config
        assert OmegaConf.select(cfg, key, default="missing") != "missing", f"{name}: {key}"


def test_train_returns_the_optimized_metric_for_the_sweeper():
    from omegaconf import OmegaConf

    from recsys.cli.train_cmd import objective
    from recsys.utils.errors import RecsysError

    results = {"val/ndcg@10": 0.25, "test/ndcg@10": 0.5}
    assert objective(OmegaConf.create({"optimized_metric": None}), results) is results
    got = objective(OmegaConf.create({"optimized_metric": "val/ndcg@10"}), results)
    assert type(got) is float and got == 0.25
    with pytest.raises(RecsysError, match="optimized_metric=test/ndcg@10: expected a validation metric"):
        objective(OmegaConf.create({"optimized_metric": "test/ndcg@10"}), results)
    with pytest.raises(RecsysError, match="optimized_metric=val/ndgc@10: not a metric of this run; expected one of: "
                                          "val/ndcg@10"):
        objective(OmegaConf.create({"optimized_metric": "val/ndgc@10"}), results)


def test_submitit_launcher_configs_compose():
    from hydra import compose, initialize_config_dir

    from recsys.cli.config import register_resolvers

    register_resolvers()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "\\s*'hydra/launcher/submitit_", UserWarning)  # see recsys.cli.main
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            slurm = compose(config_name="train", overrides=["hydra/launcher=submitit_slurm",
                                                            "hydra.launcher.partition=gpu"], return_hydra_config=True)
            local = compose(config_name="train", overrides=["hydra/launcher=submitit_local"], return_hydra_config=True)
    s = slurm.hydra.launcher
    assert s._target_.endswith("SlurmLauncher") and s.partition == "gpu" and s.gpus_per_node == 1
    assert s.timeout_min > 0 and s.tasks_per_node == 1
    assert local.hydra.launcher._target_.endswith("LocalLauncher")


def test_submitit_local_runs_one_job(tmp_path):
    sweep = tmp_path / "sweep"
    r = run("train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "net.hidden=16", *TINY,
            f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
            env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "validated against ConfigStore schema" not in r.stderr
    assert _summary(sweep / "0")["val/n_users"] == 300
    assert list((sweep / ".submitit").glob("*/*_0_log.out"))  # ran as a submitit job, in its own process


DDP = ["experiment=sasrec_synthetic", "data.n_users=400", "data.n_items=120", "datamodule.max_len=20", "net.hidden=32",
       "trainer.enable_progress_bar=false", "trainer.max_epochs=3", "datamodule.batch_size=32",
       "module.optimizer.lr=0.005", "callbacks.early_stopping=null"]


def test_ddp_cpu_trains_and_its_gathered_evaluation_equals_one_process(tmp_path):
    """2 gloo processes train real steps; the metrics they gather equal a single-process
    evaluation of the best checkpoint (resumed at its last epoch: zero steps, the same
    evaluation code); the checkpoint and the saved model reload to the same weights."""
    common = [*DDP, f"paths.cache_dir={tmp_path / 'cache'}"]
    two, one = tmp_path / "two", tmp_path / "one"
    r = run("train", *common, "trainer=ddp_cpu", "logger=csv", "trainer.log_every_n_steps=1", f"hydra.run.dir={two}",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    a = _summary(two)
    assert a["timings"]["optimizer_steps_total"] >= 12 and a["test/n_users"] == 400
    with open(two / "csv" / "version_0" / "metrics.csv") as f:
        losses = [float(row["train/loss"]) for row in csv.DictReader(f) if row["train/loss"]]
    assert len(losses) >= 12 and sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.2  # ~4.8 (ln 120) falling
    best = Path(a["best_checkpoint"])
    assert best.is_file() and best.parent == two / "checkpoints"
    r = run("train", *common, "~logger", f"resume={best}", f"hydra.run.dir={one}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    b = _summary(one)
    assert b["timings"]["optimizer_steps_run"] == 0 and b["resumed_from"]["path"] == str(best)
    keys = [k for k in a if k.startswith(("val/", "test/"))]
    assert len(keys) > 20 and {k: a[k] for k in keys} == {k: b[k] for k in keys}
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    for run_dir in (two, one):
        net = load_model(run_dir / "model").state_dict()
        assert net.keys() == {k.removeprefix("net.") for k in state if k.startswith("net.")}
        assert all(torch.equal(v, state[f"net.{k}"]) for k, v in net.items())
