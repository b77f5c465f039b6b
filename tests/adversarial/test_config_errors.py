"""Config mistakes on the command line: one ``error:`` line, exit code 2, no
traceback, nothing created (no run directory), before torch is imported."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.helpers import run

# (command + overrides, phrases the one error line must contain; the first is the key)
CASES = [
    # typo'd keys: the nearest valid names
    ("train trainer.max_epoch=1", ["trainer.max_epoch", "did you mean trainer.max_epochs"]),
    ("train max_epochs=3", ["max_epochs", "trainer.max_epochs"]),
    ("evaluate modle=popularity", ["modle", "did you mean model"]),
    ("train datamodule.batchsize=8", ["datamodule.batchsize", "datamodule.batch_size"]),
    ("index query bundle=b usr=1", ["usr", "did you mean user"]),
    ("evaluate hydra.run.dri=x", ["hydra.run.dri", "hydra.run.dir"]),
    ("evaluate ~nope", ["nope", "no such key"]),
    ("evaluate +seed=3", ["seed", "already exists"]),
    # unknown presets / options: the group's options
    ("train experiment=nope", ["experiment=nope", "sasrec_synthetic", "two_tower_synthetic"]),
    ("evaluate model=nope", ["model=nope", "popularity", "markov"]),
    ("train trainer=gpux", ["trainer=gpux", "did you mean gpu", "ddp_cpu"]),
    ("evaluate -m model=popularity,nope", ["model=nope", "popularity"]),
    # wrong types
    ("train trainer.max_epochs=abc", ["trainer.max_epochs", "integer", "abc"]),
    ("index query k=abc", ["k", "integer", "abc"]),
    ("index query bundle=b user=1 k=2.7", ["k", "integer", "2.7"]),
    ("evaluate evaluation.exclude_history=yes", ["evaluation.exclude_history", "true or false", "yes"]),
    ("evaluate evaluation.ks=5", ["evaluation.ks", "list", "5"]),
    ("evaluate evaluation.ks=[5,x]", ["evaluation.ks", "integers", "[5,x]"]),
    ("evaluate -m data.n_users=100,abc", ["data.n_users", "integer", "abc"]),
    ("evaluate hydra.job.chdir=abc", ["hydra.job.chdir", "bool", "abc"]),
    ("evaluate 'k=[1,'", ["k=[1,", "cannot read"]),
    ("evaluate model=popularity,markov", ["model=popularity,markov", "-m"]),
    # out of range
    ("train datamodule.batch_size=-5", ["datamodule.batch_size", ">= 1", "-5"]),
    ("index query bundle=b user=1 k=-3 exclude_seen=true", ["k", ">= 1", "-3"]),
    ("train trainer.max_epochs=-2", ["trainer.max_epochs", "-1 (no limit", "-2"]),
    ("data stats data.n_users=0", ["data.n_users", ">= 1", "0"]),
    ("evaluate evaluation.ks=[5,0]", ["evaluation.ks", ">= 1", "[5,0]"]),
    ("train net.dropout=1.5", ["net.dropout", "[0, 1)", "1.5"]),
    ("evaluate -m data.n_users=100,-3", ["data.n_users", ">= 1", "-3"]),
    # missing mandatory values: the key and an example
    ("export bench", ["bundle", "is required", "e.g. recsys export bench bundle=<"]),
    ("index query user=1", ["bundle", "is required", "e.g. recsys index query bundle=<"]),
    ("export name=x", ["run", "is required", "e.g. recsys export run=<"]),
    ("export", ["run and name", "are required"]),
    ("data validate format=csv", ["path", "is required", "e.g. recsys data validate path=<file>"]),
    ("data erase events=x.parquet", ["user_id", "is required", "user_id=<id>"]),
    ("evaluate data=csv", ["data.loader.path", "is required"]),
    # Hydra's flags still go through the checks
    ("train --cfg job trainer.max_epoch=1", ["trainer.max_epoch", "trainer.max_epochs"]),
]


def _args(case: str) -> list[str]:
    import shlex

    return shlex.split(case)


@pytest.mark.parametrize("case,phrases", CASES, ids=[c for c, _ in CASES])
def test_config_mistake_is_one_line_exit_2_nothing_created(tmp_path, case, phrases):
    work = tmp_path / "cwd"
    work.mkdir()
    args = [*_args(case), f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
            f"paths.cache_dir={tmp_path / 'cache'}"]
    res = run(*args, cwd=work)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for phrase in phrases:
        assert phrase in line, (phrase, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd"]  # no run, sweep or cache dir
    assert list(work.iterdir()) == []  # nor runs/ or outputs/ in the working directory


def test_config_error_exits_before_torch_is_imported(tmp_path):
    code = (
        "import sys, time\n"
        "from recsys.cli.main import main\n"
        "t = time.perf_counter()\n"
        "try:\n"
        "    main(['train', 'trainer.max_epochs=abc'])\n"
        "except SystemExit as e:\n"
        "    print(e.code, 'torch' in sys.modules, 'pytorch_lightning' in sys.modules, time.perf_counter() - t)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    exit_code, torch, lightning, secs = res.stdout.split()
    assert (exit_code, torch, lightning) == ("2", "False", "False"), res.stdout + res.stderr
    assert float(secs) < 5  # was: 12 s of data preparation and model building, then a traceback
    assert res.stderr.startswith("error: trainer.max_epochs")


def test_ids_reach_the_command_as_typed(tmp_path):
    res = run("index", "query", "bundle=b", "user=007", "item=[1_0,x,'a b']", "--cfg", "job", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    assert cfg["user"] == "007" and cfg["item"] == ["1_0", "x", "a b"]
    res = run("data", "erase", "user_id=1_0", "events=e.parquet", "--cfg", "job", cwd=tmp_path)
    assert yaml.safe_load(res.stdout)["user_id"] == "1_0"


def test_erase_user_1_0_keeps_user_10(tmp_path):
    """``user_id=1_0`` once reached the command as the int 10 and erased another user."""
    import pyarrow.parquet as pq

    from tests.helpers import events_table

    events = tmp_path / "events.parquet"
    pq.write_table(events_table([("10", "a", 1.0), ("10", "b", 2.0), ("1_0", "a", 3.0), ("7", "c", 4.0)]), events)
    res = run("data", "erase", "user_id=1_0", f"events={events}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    users = pq.read_table(events).column("user_id").to_pylist()
    assert sorted(users) == ["10", "10", "7"]


def test_quote_ids_round_trips_through_hydra():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from recsys.cli.ids import quote_ids

    parser = OverridesParser.create()
    for raw in ["1_0", "007", "1e3", "true", "null", "", "a b", "it's", "a\\", "a\\'b", "x,y", "[", "u:1", '"q"x']:
        (text,) = quote_ids([f"user_id={raw}"], multirun=False)
        assert parser.parse_override(text).value() == raw, (raw, text)
    assert quote_ids(["user=[1_0, 007]", "+item=3", "k=5", "user_id='already'"], False) == \
        ["user=['1_0','007']", "+item='3'", "k=5", "user_id='already'"]
    assert quote_ids(["user_id=1_0,2"], multirun=True) == ["user_id='1_0','2'"]


@pytest.mark.parametrize("command,phrases", [
    ("train", ["recsys train: Trains", "usage: recsys train experiment=<preset>", "trainer=cpu", "experiment=null"]),
    ("index query", ["recsys index query: Queries", "bundle=???", "k=10", "exclude_seen=false"]),
    ("export bench", ["recsys export bench: ", "bundle=???"]),
])
def test_command_help_says_what_the_command_does(command, phrases):
    res = run(*command.split(), "--help")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"recsys {command}: ")
    for phrase in phrases:
        assert phrase in res.stdout, phrase
    assert "== Configuration groups ==" not in res.stdout  # not Hydra's generic page


def test_every_shipped_config_passes_the_checks():
    """No false alarms: every root config and every group option is within the rules."""
    from recsys.cli.config import config_dir, register_resolvers
    from recsys.cli.main import COMMANDS
    from recsys.cli.validate import Checker

    register_resolvers()
    root_of = {"data": "evaluate", "split": "evaluate", "model": "evaluate", "evaluation": "evaluate",
               "ranker": "rank_train", "index": "index_build", "features": "features_build", "policy": "ope",
               "registry": "registry"}
    jobs = [(name, []) for name in sorted({c.config for c in COMMANDS.values()})]
    groups = sorted(p.name for p in config_dir().iterdir() if p.is_dir() and p.name not in ("hydra", "paths"))
    for group in groups:
        options = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
        jobs += [(root_of.get(group, "train"), [f"{group}={option}"]) for option in options]
    for name, overrides in jobs:
        Checker(config_dir(), name, name, overrides, require_values=False).run()
