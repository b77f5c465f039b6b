"""The console script: bad input -> one line on stderr + exit 2; summaries; lean startup."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, run


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# (file name, content, format, phrases the one-line error must contain)
BAD = [
    ("missing.txt", None, "seqtxt", ["missing.txt", "not found"]),
    ("empty.txt", "", "seqtxt", ["empty.txt", "empty"]),
    ("tokens.txt", "1 2 3\n2 4 x5\n", "seqtxt", ["tokens.txt:2", "x5"]),
    ("trunc.txt", "1 2 3\n2 4 5", "seqtxt", ["trunc.txt:2", "truncated"]),
    ("nocol.inter", "user_id:token\trating:float\n1\t3\n", "recbole", ["nocol.inter", "item_id"]),
    ("dtype.inter", "user_id:token\titem_id:token\trating:float\n1\t2\t3\n1\t3\tabc\n", "recbole",
     ["dtype.inter:3", "rating", "abc"]),
    ("nullid.inter", "user_id:token\titem_id:token\trating:float\n1\t\t3\n", "recbole", ["nullid.inter:2", "item_id"]),
    ("dup.inter", "user_id:token\titem_id:token\n1\t2\nuser_id:token\titem_id:token\n3\t4\n", "recbole",
     ["dup.inter:3", "duplicate header"]),
    ("negts.csv", "user_id,item_id,timestamp\n1,2,5\n1,3,-4\n", "csv", ["negts.csv", "timestamp", "negative"]),
    ("nants.csv", "user_id,item_id,timestamp\n1,2,5\n1,3,nan\n", "csv", ["nants.csv", "timestamp"]),
    ("trunc.csv", "user_id,item_id,timestamp\n1,2,5\n1,3", "csv", ["trunc.csv:3", "truncated"]),
]


@pytest.mark.parametrize("name,content,fmt,phrases", BAD, ids=[b[0] for b in BAD])
def test_validate_bad_input_exits_2_with_one_line(tmp_path, name, content, fmt, phrases):
    path = tmp_path / name
    if content is not None:
        _write(path, content)
    res = run("data", "validate", f"path={path}", f"format={fmt}", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    for phrase in phrases:
        assert phrase.lower() in lines[0].lower(), (phrase, lines[0])
    assert list(tmp_path.iterdir()) == ([path] if content is not None else [])  # nothing written


def test_validate_good_file(tmp_path):
    path = _write(tmp_path / "ok.txt", "1 1 2 3\n2 2 3\n")
    res = run("data", "validate", f"path={path}", "format=seqtxt", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["valid"] is True and out["n_users"] == 2 and out["n_items"] == 3


def test_unknown_command_exits_2():
    res = run("frobnicate")
    assert res.returncode == 2 and "unknown command" in res.stderr


@pytest.mark.parametrize("command", ["validate", "stats"])
def test_data_commands_do_not_import_torch(tmp_path, command):
    path = _write(tmp_path / "s.txt", "1 1 2 3\n2 2 3\n")
    args = (["data", "validate", f"path={path}", "format=seqtxt"] if command == "validate" else
            ["data", "stats", "data.n_users=50", "data.n_items=60", f"paths.cache_dir={tmp_path}"])
    code = (
        "import sys; from recsys.cli.main import main\n"
        f"main({args!r})\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO_TORCH')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("NO_TORCH")


@pytest.fixture
def tiny_synthetic(tmp_path):
    return ["data.n_users=300", "data.n_items=150", f"paths.cache_dir={tmp_path / 'cache'}"]


def test_evaluate_writes_summary_in_given_run_dir(tmp_path, tiny_synthetic):
    run_dir = tmp_path / "run"
    res = run("evaluate", "model=popularity", *tiny_synthetic, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0 < summary["test/ndcg@10"] < 1
    assert summary["test/n_users"] == 300
    assert len(summary["data"]["fingerprint"]) == 64
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    # second run reuses the cache: same fingerprint, same numbers
    res2 = run("evaluate", "model=popularity", *tiny_synthetic, f"hydra.run.dir={tmp_path / 'run2'}", cwd=tmp_path)
    summary2 = json.loads((tmp_path / "run2" / "summary.json").read_text())
    assert res2.returncode == 0
    assert summary2["data"]["fingerprint"] == summary["data"]["fingerprint"]
    assert summary2["test/ndcg@10"] == summary["test/ndcg@10"]


def test_evaluate_sweep_with_multirun(tmp_path, tiny_synthetic):
    res = run("evaluate", "-m", "model=popularity,markov", *tiny_synthetic,
              f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    ndcg = [json.loads((tmp_path / "sweep" / str(i) / "summary.json").read_text())["test/ndcg@10"] for i in (0, 1)]
    assert ndcg[1] > ndcg[0]  # markov beats popularity on the sequential synthetic world


def test_demo_end_to_end(tmp_path, tiny_synthetic):
    run_dir = tmp_path / "demo"
    res = run("demo", *tiny_synthetic, "trainer.max_epochs=8", "loop_stage.n_explore=500", "loop_stage.n_canary=600",
              "loop_stage.n_bootstrap=10", "ope_options.n_bootstrap=10", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "test/ndcg@10" in res.stdout  # the results table
    summary = json.loads((run_dir / "summary.json").read_text())
    results = summary["results"]
    assert set(results) == {"popularity", "random", "markov", "itemknn", "ease", "bpr", "sasrec"}
    assert results["markov"]["test/ndcg@10"] > results["popularity"]["test/ndcg@10"] > results["random"]["test/ndcg@10"]
    assert results["sasrec"]["test/ndcg@10"] > results["random"]["test/ndcg@10"]
    assert 0 < results["sasrec"]["test/coverage@10"] <= 1
    assert (run_dir / "model" / "weights.safetensors").is_file()
    ope = summary["ope"]  # the off-policy stage: estimates with intervals beside the true value
    assert ope["true_value"] > 0 and {"IPS", "SNIPS", "DR"} <= set(ope["estimates"])
    # percentile intervals from resamples that refit the reward model: ordered and finite; a biased
    # (misspecified) DM need not sit inside its own resampled interval, the importance-weighted ones do
    assert all(np.isfinite([e["ci_low"], e["ci_high"]]).all() and e["ci_low"] <= e["ci_high"]
               for e in ope["estimates"].values())
    assert all(ope["estimates"][n]["ci_low"] <= ope["estimates"][n]["estimate"] <= ope["estimates"][n]["ci_high"]
               for n in ("IPS", "SNIPS"))
    assert summary["data"]["fingerprint"] and summary["environment"]["versions"]["numpy"]
    loop = summary["online_loop"]  # one loop iteration: champion -> logs -> OPE of a challenger -> canary verdict
    assert set(loop["variants"]) == {"champion", "ann_only"}
    for v in loop["variants"].values():
        assert v["ope_ci"][0] <= v["ope"] <= v["ope_ci"][1] and v["online"] > 0 and v["online_requests"] > 0
    assert loop["verdict"]["verdict"] in ("better", "worse", "no significant difference")
    assert "online loop" in res.stdout and "canary verdict" in res.stdout


def _data_file(rel: str) -> Path:
    root = Path(os.environ.get("RECSYS_DATA_ROOT", ROOT.parent / "shared" / "datasets"))
    path = root / rel
    if not path.is_file():
        pytest.skip(f"real data set not found at {path} (set RECSYS_DATA_ROOT)")
    return path


@pytest.mark.data
def test_beauty_stats(tmp_path):
    path = _data_file("amazon-beauty/Beauty.txt")
    res = run("data", "stats", "data=beauty", f"paths.data_root={path.parents[1]}",
              f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout)
    assert (stats["n_users"], stats["n_items"], stats["n_interactions"]) == (22363, 12101, 198502)
    for key in ("density", "seq_len_mean", "seq_len_median", "seq_len_max"):
        assert key in stats


def test_bad_config_value_exits_2(tmp_path, tiny_synthetic):
    res = run("data", "stats", *tiny_synthetic, "data.loader.slate_size=0", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: bad synthetic data config: SyntheticConfig: need "
                                               "slate_size >= 1 and n_requests >= 1"]


def test_missing_data_root_names_the_file(tmp_path):
    res = run("evaluate", "data=beauty", f"paths.data_root={tmp_path / 'nowhere'}",
              f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert res.returncode == 2
    assert "nowhere/amazon-beauty/Beauty.txt: file not found" in res.stderr
    assert not (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "cache").exists()


def test_temporal_split_on_ordinal_data_exits_2(tmp_path):
    path = _write(tmp_path / "s.txt", "1 1 2 3\n2 2 3 4\n")
    res = run("evaluate", "data=csv", "data.loader._target_=recsys.data.loaders.SeqTxtLoader",
              f"data.loader.path={path}", "~data.loader.delimiter", "~data.loader.columns",
              "~data.loader.timestamp_unit", "split=temporal", f"hydra.run.dir={tmp_path / 'run'}",
              f"paths.cache_dir={tmp_path / 'cache'}", cwd=tmp_path)
    assert res.returncode == 2 and "ordinal" in res.stderr
