"""docs/extending.md is run, not just read: its code blocks are applied to a copy of
the package and configs in tmp_path, then the doc's own test and a two-epoch
``recsys train experiment=meanpool_synthetic`` run there."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from recsys.cli.config import config_dir

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "extending.md"
CONFIGS = config_dir().relative_to(ROOT)  # where the package's config tree lives in the checkout
BLOCK = re.compile(r"^```(?:python|yaml)\n((?:# @package \S+\n)?# (\S+)(?: — add to (\w+):)?\n.*?)^```",
                   re.M | re.S)


def doc_blocks() -> list[tuple[str, str | None, str]]:
    """(path, dict name or None, text) for every block whose first line is ``# <path>``
    (after a Hydra ``# @package`` header)."""
    return [(m.group(2), m.group(3), m.group(1)) for m in BLOCK.finditer(DOC.read_text())]


def apply_blocks(repo: Path) -> list[str]:
    done = []
    for path, registry, text in doc_blocks():
        target = repo / re.sub(r"^(recsys/)?configs/", f"{CONFIGS.as_posix()}/", path)
        if registry is None:  # a new file, written as shown
            assert not target.exists(), f"the doc's {path} already exists in the project"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        else:  # lines added to a registry dict literal
            lines = target.read_text().splitlines(keepends=True)
            at = [i for i, ln in enumerate(lines) if ln.startswith(registry) and ln.rstrip().endswith("{")]
            assert len(at) == 1, f"{path}: no single '{registry} ... {{' line"
            lines[at[0] + 1:at[0] + 1] = [ln + "\n" for ln in text.splitlines()[1:]]
            target.write_text("".join(lines))
        done.append(path)
    return done


def test_doc_blocks_cover_every_step():
    paths = [p for p, _, _ in doc_blocks()]
    assert paths == ["recsys/models/meanpool.py", "recsys/configs/net/meanpool.yaml", "recsys/artifacts/models.py",
                     "recsys/export/encoders.py", "recsys/configs/experiment/meanpool_synthetic.yaml",
                     "tests/test_meanpool.py"]
    assert "recsys train experiment=meanpool_synthetic" in DOC.read_text()


def test_worked_example_trains_in_a_copy(tmp_path):
    repo = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "recsys", repo / "recsys", ignore=ignore)
    (repo / "configs").symlink_to("recsys/configs")  # as in the checkout: the configs ship in the package
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    (repo / "tests").mkdir()
    (repo / "tests" / "__init__.py").write_text("")
    apply_blocks(repo)
    env = {k: v for k, v in os.environ.items() if k != "RECSYS_CONFIG_DIR"}
    env = {**env, "PYTHONPATH": str(repo), "WANDB_MODE": "offline", "RECSYS_PROGRESS": "0",
           "RECSYS_CACHE_DIR": str(tmp_path / "cache")}

    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_meanpool.py"],
                       cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "2 passed" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]

    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "recsys", "train", "experiment=meanpool_synthetic", "data.n_users=200",
                        "data.n_items=100", "data.loader.n_requests=500", "trainer.max_epochs=2", "~logger",
                        "trainer.enable_progress_bar=false", f"hydra.run.dir={run}"],
                       cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "MeanPool/FullSoftmaxCE" in r.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert 0 < summary["test/ndcg@10"] <= 1 and summary["timings"]["epochs_run"] == 2
    args = json.loads((run / "model" / "model_args.json").read_text())
    assert args["model_args"]["_target_"] == "recsys.models.meanpool.MeanPool"
    assert not (ROOT / "recsys" / "models" / "meanpool.py").exists()  # the project itself is untouched
