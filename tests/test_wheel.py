"""The built wheel works on its own: it carries the config tree, the command table and
``py.typed``, and an installed copy (not the source checkout) runs real commands from
another directory.

The wheel is built from a copy of the sources in a temporary directory (so neither the
checkout nor a stale ``build/`` is touched or used), installed with ``pip --target``
and run with ``python -S``: without the ``site`` module, ``.pth`` files are not
processed, so the editable install's finder in the venv cannot take over ``recsys``;
the dependencies (torch, hydra, ...) still come from the venv's site-packages, which
is put on ``PYTHONPATH`` after the installed copy.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import ROOT

REQUIRED = ["recsys/configs/train.yaml", "recsys/configs/evaluate.yaml", "recsys/configs/data/synthetic.yaml",
            "recsys/configs/paths/default.yaml", "recsys/cli/commands.yaml", "recsys/py.typed"]


def _pip(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    res = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, cwd=cwd, env=env,
                         timeout=300)
    assert res.returncode == 0, f"pip {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "recsys", src / "recsys", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp / "dist"
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src), cwd=tmp)
    wheels = list(dist.glob("recsys-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_carries_configs_command_table_and_py_typed(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in REQUIRED if n not in names]
    assert not missing, f"the wheel lacks {missing}"
    # every config of the source tree, at any depth, is in the wheel
    src_configs = {f"recsys/configs/{p.relative_to(ROOT / 'recsys' / 'configs').as_posix()}"
                   for p in (ROOT / "recsys" / "configs").rglob("*.yaml")}
    experiments = {n for n in src_configs if n.startswith("recsys/configs/experiment/")}
    assert experiments, "no experiment configs in the source tree?"
    assert not src_configs - names, f"configs missing from the wheel: {sorted(src_configs - names)}"
    assert not any(n.startswith(("tests/", "configs/")) for n in names), "the wheel ships tests or a top-level configs/"


def test_installed_wheel_runs_commands_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    _pip("install", "--no-deps", "--target", str(site), str(wheel), cwd=tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    venv_site = sysconfig.get_paths()["purelib"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "RECSYS_"))}
    env.update(PYTHONPATH=os.pathsep.join([str(site), venv_site]), WANDB_MODE="offline")

    def py(*args: str) -> subprocess.CompletedProcess:
        res = subprocess.run([sys.executable, "-S", *args], capture_output=True, text=True, cwd=work, env=env,
                             timeout=300)
        assert res.returncode == 0, f"{args} exit {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        return res

    # the recsys imported is the installed copy, and its config tree is the installed one
    where = py("-c", "import recsys, recsys.cli.config as c; print(recsys.__file__); print(c.config_dir());"
                     "print(c.project_root())").stdout.split("\n")
    module, configs, root = (Path(x).resolve() for x in where[:3])
    assert module.is_relative_to(site.resolve()), module
    assert configs == (site / "recsys" / "configs").resolve(), configs
    assert root == work.resolve(), f"project_root() of an installed copy should be the cwd, got {root}"
    assert not module.is_relative_to(ROOT.resolve()) and not configs.is_relative_to(ROOT.resolve())

    # the console script pip wrote (its entry point) and `--help` listing the installed configs
    script = site / "bin" / "recsys"
    assert script.is_file(), sorted(p.name for p in (site / "bin").iterdir()) if (site / "bin").is_dir() else site
    helped = py(str(script), "--help").stdout
    assert "data stats" in helped and "evaluate" in helped, helped
    assert f"Configs: {site / 'recsys' / 'configs'}" in helped, helped

    # a real command that composes configs: dataset statistics, cached under the cwd
    small = ["data=synthetic", "data.n_users=60", "data.n_items=40", "data.loader.n_requests=50"]
    stats = json.loads(py("-m", "recsys", "data", "stats", *small).stdout)
    assert 0 < stats["n_users"] <= 60, stats
    assert (work / ".cache" / "data").is_dir(), sorted(p.name for p in work.iterdir())

    # and an evaluation run (config groups: model, split, evaluation) with its run directory in tmp
    run_dir = tmp_path / "run"
    res = py("-m", "recsys", "evaluate", "model=popularity", *small, f"hydra.run.dir={run_dir}",
             f"paths.cache_dir={tmp_path / 'cache'}")
    assert run_dir.is_dir() and any(run_dir.iterdir()), f"no run directory:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    assert "ndcg" in (res.stdout + res.stderr).lower() or any("ndcg" in p.read_text(errors="ignore").lower()
                                                              for p in run_dir.rglob("*.json")), res.stdout[-2000:]
