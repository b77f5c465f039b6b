"""Hostile artifacts (issue 17, items 1, 2, 4, 12): crafted classes never run,
outputs never replace what is not theirs, tampered bundles are refused before use,
killed writers leave nothing behind."""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from recsys.artifacts.bundle import EXPORT_FORMAT, INDEX_FORMAT, MODEL_FORMAT, bundle_name, seal, verify_bundle
from recsys.artifacts.errors import BundleError
from recsys.artifacts.models import load_model, rebuild_net, save_model
from recsys.utils.io import atomic_dir, clean_stale_temps
from tests.helpers import ranker_run, run

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return ranker_run(tmp_path_factory.mktemp("run"), n_parity_rows=1000, train_steps=5)


@pytest.fixture(scope="module")
def bundle(run_dir, tmp_path_factory) -> Path:
    from recsys.export.onnx_ranker import export_ranker

    out = tmp_path_factory.mktemp("export") / "dcn"
    export_ranker(run_dir, out, batch_sizes=(1, 256))
    return out


def _crafted_run(tmp: Path, marker: Path, *, reseal: bool = True) -> Path:
    """A run whose model folder names ``os.system``, with every checksum recomputed
    (what an attacker who can write the folder can do)."""
    model = tmp / "evil_run" / "model"
    model.mkdir(parents=True)
    (model / "weights.safetensors").write_bytes(b"\0" * 16)
    from recsys.utils.io import sha256_file

    (model / "model_args.json").write_text(json.dumps(
        {"model_args": {"_target_": "os.system", "command": f"touch {marker}"},
         "weights_sha256": sha256_file(model / "weights.safetensors")}))
    (model / "features.json").write_text(json.dumps({"inputs": [], "feature_set_version": "x", "vocab_sizes": {}}))
    if reseal:
        seal(model, {"format": MODEL_FORMAT, "kind": "model", "model_class": "os.system",
                     "weights_sha256": sha256_file(model / "weights.safetensors")})
    (tmp / "evil_run" / "summary.json").write_text("{}")
    return tmp / "evil_run"


# ----------------------------------------------------------------------------- code execution

@pytest.mark.parametrize("reseal", [True, False])
def test_crafted_model_class_is_refused_by_the_python_api(tmp_path, reseal):
    marker = tmp_path / "pwned"
    evil = _crafted_run(tmp_path, marker, reseal=reseal)
    for fn in (load_model, rebuild_net):
        with pytest.raises(BundleError, match="os.system|without manifest"):
            fn(evil / "model")
    assert not marker.exists()


def test_crafted_run_through_export_creates_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = _crafted_run(tmp_path, marker)
    r = run("export", f"run={evil}", "name=x", f"hydra.run.dir={tmp_path / 'job'}",
            env={"RECSYS_EXPORT_DIR": str(tmp_path / "export")})
    assert r.returncode == 2, r.stderr
    assert "refused model class 'os.system'" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists() and not (tmp_path / "export" / "x").exists()


def test_crafted_bundle_through_export_bench_creates_nothing(tmp_path):
    """The attack of the issue: a bundle pointing at a crafted run, every checksum
    recomputed by the attacker."""
    marker = tmp_path / "pwned"
    evil = _crafted_run(tmp_path, marker)
    b = tmp_path / "evil_bundle"
    b.mkdir()
    (b / "ranker.onnx").write_bytes(b"not onnx")
    seal(b, {"format": EXPORT_FORMAT, "kind": "ranker", "inputs": [],
             "model": {"file": "ranker.onnx", "run_dir": str(evil), "class": "os.system",
                       "weights_sha256": json.loads((evil / "model" / "model_args.json").read_text())["weights_sha256"]},
             "parity": {"max_abs_diff": 0.0}})
    r = run("export", "bench", f"bundle={b}", f"hydra.run.dir={tmp_path / 'job'}")
    assert r.returncode == 2 and "refused model class 'os.system'" in r.stderr, r.stderr
    assert not marker.exists()


def test_unsealed_bundle_is_refused_before_its_run_is_read(tmp_path, bundle):
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    (b / "manifest.sha256").unlink()
    r = run("export", "bench", f"bundle={b}", f"hydra.run.dir={tmp_path / 'job'}")
    assert r.returncode == 2 and "no manifest.sha256" in r.stderr and "Traceback" not in r.stderr


def test_crafted_config_target_in_summary_is_refused(tmp_path, run_dir):
    """`recsys export run=` rebuilds a sequence run's data from its summary.json: a
    `_target_` there that the project's configs never use is refused before import."""
    from recsys.artifacts.targets import check_targets, shipped_targets
    from recsys.cli.config import config_dir

    allowed = shipped_targets(str(config_dir()))
    cfg = {"data": {"loader": {"_target_": "os.system", "command": "touch x"}}, "split": {}}
    with pytest.raises(BundleError, match=r"data.loader._target_ 'os.system'"):
        check_targets(cfg, allowed, "summary.json")
    check_targets({"data": {"loader": {"_target_": "recsys.data.synthetic_source.SyntheticLoader"}}}, allowed, "s")


def test_crafted_run_through_index_build_creates_nothing(tmp_path):
    marker = tmp_path / "pwned"
    evil = _crafted_run(tmp_path, marker)
    from recsys.artifacts.embeddings import write_embedding_dir

    write_embedding_dir(evil, {"item_id": [str(i) for i in range(50)],
                               "embedding": np.random.default_rng(0).standard_normal((50, 4))}, meta={"metric": "ip"})
    r = run("index", "build", f"source={evil}", "name=ix", "index=flat", f"hydra.run.dir={tmp_path / 'job'}",
            env={"RECSYS_EXPORT_DIR": str(tmp_path / "export")})
    assert r.returncode == 2 and "os.system" in r.stderr, r.stderr
    assert not marker.exists() and not (tmp_path / "export" / "ix").exists()


# ----------------------------------------------------------------------------- data loss

def _user_folder(p: Path) -> Path:
    p.mkdir(parents=True)
    (p / "thesis.txt").write_text("years of work")
    return p


def test_index_build_never_replaces_a_users_folder(tmp_path):
    from recsys.artifacts.embeddings import write_embedding_dir

    src = tmp_path / "emb"
    write_embedding_dir(src, {"item_id": [str(i) for i in range(40)],
                              "embedding": np.random.default_rng(0).standard_normal((40, 4))}, meta={"metric": "ip"})
    target = _user_folder(tmp_path / "mine")
    args = ("index", "build", f"source={src}", f"out={target}", "index=flat", "recall_queries=20")
    r = run(*args, f"hydra.run.dir={tmp_path / 'job1'}")
    assert r.returncode == 2 and "not a bundle" in r.stderr and "overwrite=true" in r.stderr
    assert (target / "thesis.txt").read_text() == "years of work"
    # a rebuild over an index bundle of the same kind is fine; overwrite=true is the explicit opt-in
    r = run(*args[:3], f"out={tmp_path / 'ix'}", *args[4:], f"hydra.run.dir={tmp_path / 'job2'}")
    assert r.returncode == 0, r.stderr
    r = run(*args[:3], f"out={tmp_path / 'ix'}", *args[4:], f"hydra.run.dir={tmp_path / 'job3'}")
    assert r.returncode == 0, r.stderr
    r = run(*args, "overwrite=true", f"hydra.run.dir={tmp_path / 'job4'}")
    assert r.returncode == 0 and not (target / "thesis.txt").exists()


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/b", "..", ".hidden", "x y"])
def test_export_name_is_a_name_not_a_path(tmp_path, run_dir, name):
    r = run("export", f"run={run_dir}", f"name={name}", f"hydra.run.dir={tmp_path / 'job'}",
            env={"RECSYS_EXPORT_DIR": str(tmp_path / "export" / "inner")})
    assert r.returncode == 2 and "must be a plain name" in r.stderr, r.stderr
    assert not (tmp_path / "export" / "escape").exists()


def test_export_refuses_to_replace_a_non_bundle_folder(tmp_path, run_dir):
    from recsys.export.onnx_ranker import export_ranker

    target = _user_folder(tmp_path / "export" / "dcn")
    with pytest.raises(BundleError, match="not a bundle; refusing to replace it"):
        export_ranker(run_dir, target)
    assert (target / "thesis.txt").is_file()
    # a bundle of another kind (an index) is refused too
    other = tmp_path / "export" / "ix"
    other.mkdir()
    (other / "index.faiss").write_bytes(b"x")
    seal(other, {"format": INDEX_FORMAT, "kind": "index"})
    with pytest.raises(BundleError, match="is a 'index' bundle; refusing to replace it with a 'ranker' bundle"):
        export_ranker(run_dir, other)
    assert (other / "index.faiss").read_bytes() == b"x"


def test_bundle_name_rules():
    assert bundle_name("ranker_v1.2-b") == "ranker_v1.2-b"
    for bad in ("", "../x", "a/b", "/abs", "..", "a..b", "-x"):
        with pytest.raises(BundleError):
            bundle_name(bad)


# ----------------------------------------------------------------------------- export bench on a changed bundle

def test_export_bench_refuses_a_modified_model_or_table(tmp_path, run_dir, bundle):
    # the run's weights changed after export: the bench would time another model
    run2 = tmp_path / "run2"
    shutil.copytree(run_dir, run2)
    net, args = rebuild_net(run2 / "model")
    with __import__("torch").no_grad():
        next(net.parameters()).add_(1.0)
    save_model(net, {k: v for k, v in args.items() if k != "_target_"}, run2 / "model")
    from recsys.artifacts.models import seal_model_dir

    seal_model_dir(run2 / "model")
    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["model"]["run_dir"] = str(run2)
    seal(b, {k: v for k, v in m.items() if k != "files"}, list(m["files"]))
    r = run("export", "bench", f"bundle={b}", f"hydra.run.dir={tmp_path / 'job'}")
    assert r.returncode == 2 and "weights differ from those" in r.stderr, r.stderr
    # a swapped model file inside the bundle
    c = tmp_path / "c"
    shutil.copytree(bundle, c)
    (c / "ranker.onnx").write_bytes((c / "ranker.onnx").read_bytes()[:-1] + b"\0")
    r = run("export", "bench", f"bundle={c}", f"hydra.run.dir={tmp_path / 'job2'}")
    assert r.returncode == 2 and "sha256 differs" in r.stderr
    # a deleted file: one line, no traceback
    d = tmp_path / "d"
    shutil.copytree(bundle, d)
    (d / "ranker.onnx").unlink()
    r = run("export", "bench", f"bundle={d}", f"hydra.run.dir={tmp_path / 'job3'}")
    assert r.returncode == 2 and "listed in the manifest but missing" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_export_bench_measures_parity_itself(tmp_path, bundle):
    r = run("export", "bench", f"bundle={bundle}", "sizes=[1,10]", "n_requests=60", "throughput_batch=64",
            f"hydra.run.dir={tmp_path / 'job'}", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert 0 <= s["parity_max_abs_diff"] < 1e-4 and "parity_max_abs_diff_at_export" in s


# ----------------------------------------------------------------------------- permissions, temp folders

def test_bundles_are_world_readable_like_normal_files(bundle, tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "b") as d:
            (d / "f").write_text("x")
    finally:
        os.umask(old)
    for p in (tmp_path / "b", bundle):
        assert stat.S_IMODE(p.stat().st_mode) == 0o755
        for f in p.iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_stale_temp_folders_of_killed_writers_are_cleaned(tmp_path):
    target = tmp_path / "bundle"
    dead = tmp_path / ".bundle.999999999.abcd1234.tmp"  # a pid that cannot exist
    dead.mkdir()
    (dead / "big.bin").write_bytes(b"\0" * 1000)
    alive = tmp_path / f".bundle.{os.getpid()}.abcd1234.tmp"
    alive.mkdir()
    other = tmp_path / ".other.999999999.abcd1234.tmp"
    other.mkdir()
    with atomic_dir(target) as d:
        (d / "f").write_text("x")
    assert not dead.exists() and alive.exists() and other.exists()
    assert clean_stale_temps(tmp_path / "other") == [other]


def test_killed_writer_leaves_no_partial_bundle(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "b") as d:
            (d / "f").write_text("x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_content_addressed_folder_keeps_the_first_writer(tmp_path):
    with atomic_dir(tmp_path / "c", replace=False) as d:
        (d / "f").write_text("first")
    inode = (tmp_path / "c" / "f").stat().st_ino
    with atomic_dir(tmp_path / "c", replace=False) as d:
        (d / "f").write_text("second")
    assert (tmp_path / "c" / "f").read_text() == "first" and (tmp_path / "c" / "f").stat().st_ino == inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_manifest_file_entries_cannot_escape_the_folder(tmp_path):
    b = tmp_path / "b"
    b.mkdir()
    (tmp_path / "secret").write_text("s")
    (b / "x").write_text("x")
    seal(b, {"format": INDEX_FORMAT, "kind": "index"}, ["x"])
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["../secret"] = m["files"].pop("x")
    from recsys.utils.io import json_text, sha256_bytes

    text = json_text(m)
    (b / "manifest.json").write_text(text)
    (b / "manifest.sha256").write_text(f"{sha256_bytes(text.encode())}  manifest.json\n")
    with pytest.raises(BundleError, match="bad files entry '../secret'"):
        verify_bundle(b, format=INDEX_FORMAT)


def test_index_build_verifies_a_runs_embeddings_folder(tmp_path):
    from recsys.artifacts.embeddings import write_embedding_dir

    rng = np.random.default_rng(0)
    write_embedding_dir(tmp_path / "run", {"item_id": [str(i) for i in range(30)], "embedding": rng.random((30, 4))},
                        users={"user_id": ["u1", "u2"], "embedding": rng.random((2, 4))}, meta={"metric": "ip"})
    emb = tmp_path / "run" / "embeddings"
    verify_bundle(emb, format="recsys.embeddings/1", kind="embeddings")
    (emb / "users.parquet").write_bytes((emb / "users.parquet").read_bytes() + b"\0")
    r = run("index", "build", f"source={tmp_path / 'run'}", f"out={tmp_path / 'ix'}", "index=flat",
            f"hydra.run.dir={tmp_path / 'job'}")
    assert r.returncode == 2 and "users.parquet" in r.stderr and "truncated or modified" in r.stderr, r.stderr
    (emb / "manifest.json").unlink()
    r = run("index", "build", f"source={tmp_path / 'run'}", f"out={tmp_path / 'ix'}", "index=flat",
            f"hydra.run.dir={tmp_path / 'job2'}")
    assert r.returncode == 2 and "without manifest.json" in r.stderr
    # a plain Parquet file given directly is user input, validated by its columns
    (tmp_path / "mine").mkdir()
    shutil.copy(emb / "items.parquet", tmp_path / "mine" / "items.parquet")
    r = run("index", "build", f"source={tmp_path / 'mine' / 'items.parquet'}", f"out={tmp_path / 'ix'}", "index=flat",
            "recall_queries=10", "metric=ip", f"hydra.run.dir={tmp_path / 'job3'}")
    assert r.returncode == 0, r.stderr
