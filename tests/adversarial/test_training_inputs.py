"""Adversarial training inputs (issue 17 items 8, 9, 12): ``resume=`` takes only a
local, checksum-verified, readable checkpoint and is checked before any data is
prepared; sizes that would train zero steps are refused; the summary after a
resume reports the epochs that actually ran."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from recsys.training.checkpoints import (CheckpointError, check_compatible, sidecar_path, verify_checkpoint,
                                         write_sidecar)
from recsys.utils.errors import RecsysError
from recsys.utils.io import sha256_file
from tests.helpers import prepared, run

TINY = ["experiment=sasrec_synthetic", "data.n_users=200", "data.n_items=60", "data.loader.n_requests=100",
        "datamodule.max_len=10", "net.hidden=16", "~logger", "trainer.enable_progress_bar=false",
        "callbacks.early_stopping=null",
        # no monitor: every epoch's checkpoint replaces the previous one (a deletion Lightning always does)
        "callbacks.model_checkpoint.monitor=null"]


def _summary(d: Path) -> dict:
    return json.loads((d / "summary.json").read_text())


def _one_error_line(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch run: checkpoints/ with epoch001.ckpt (epoch000.ckpt deleted) and last.ckpt."""
    tmp = tmp_path_factory.mktemp("trained")
    out = tmp / "run"
    res = run("train", *TINY, "trainer.max_epochs=2", f"paths.cache_dir={tmp / 'cache'}", f"hydra.run.dir={out}",
              cwd=tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp, out


# ---- sidecars -----------------------------------------------------------------
def test_every_checkpoint_written_has_a_matching_sidecar_and_deleted_ones_leave_none(trained):
    _, out = trained
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("*.ckpt"))
    sides = sorted(p.name for p in (out / "checkpoints").glob("*.sha256"))
    assert ckpts == ["epoch001.ckpt", "last.ckpt"]  # epoch000.ckpt was deleted by Lightning ...
    assert sides == [c + ".sha256" for c in ckpts]  # ... and so was its sidecar
    for c in ckpts:
        digest, name = sidecar_path(out / "checkpoints" / c).read_text().split()
        assert (digest, name) == (sha256_file(out / "checkpoints" / c), c)  # sha256sum -c format
    s = _summary(out)
    assert s["timings"]["epochs_run"] == s["timings"]["epochs_total"] == 2 and s["resumed_from"] is None


# ---- resume= refusals -----------------------------------------------------------
def test_url_resume_is_refused_before_data_preparation_without_touching_the_network(tmp_path):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    cache = tmp_path / "cache"
    t0 = time.perf_counter()
    res = run("train", *TINY, "trainer.max_epochs=1", f"resume=http://127.0.0.1:{port}/last.ckpt",
              f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    elapsed = time.perf_counter() - t0
    try:
        srv.accept()  # a connection made at any time is still queued here
        connected = True
    except socket.timeout:
        connected = False
    finally:
        srv.close()
    _one_error_line(res, "resume=http://127.0.0.1", "URL")
    assert not connected, "the checkpoint URL was fetched"
    assert not cache.exists(), "data was prepared before resume= was checked"
    assert not (tmp_path / "run" / "summary.json").exists()
    assert elapsed < 60


@pytest.mark.parametrize("url", ["https://example.com/last.ckpt", "s3://bucket/last.ckpt", "file:///tmp/last.ckpt",
                                 "gs://b/last.ckpt", "hf://org/repo/last.ckpt", "memory://last.ckpt",
                                 "simplecache::http://example.com/last.ckpt", "data:application/octet-stream,x"])
def test_every_url_scheme_is_refused_by_the_library(url):
    with pytest.raises(CheckpointError, match="URLs are not accepted"):
        verify_checkpoint(url, "resume")


def _broken_checkpoints(src: Path, d: Path) -> dict[str, Path]:
    """Copies of a good checkpoint, each broken one way (with the sidecar a user would copy along)."""
    good = src.read_bytes()
    sidecar = sidecar_path(src).read_text()
    out = {"missing": d / "missing.ckpt"}
    trunc = d / "truncated.ckpt"
    trunc.write_bytes(good[: len(good) // 2])
    sidecar_path(trunc).write_text(sidecar)
    flip = d / "flipped.ckpt"
    b = bytearray(good)
    b[len(b) // 2] ^= 0x01
    flip.write_bytes(bytes(b))
    sidecar_path(flip).write_text(sidecar)
    garbage = d / "garbage.ckpt"
    garbage.write_bytes(os.urandom(4096))
    write_sidecar(garbage)  # even with a matching checksum: not a checkpoint
    out.update(truncated=trunc, flipped=flip, garbage=garbage)
    return out


def test_missing_truncated_garbage_and_flipped_checkpoints_are_refused_in_one_line(trained, tmp_path):
    tmp, out = trained
    bad = _broken_checkpoints(out / "checkpoints" / "last.ckpt", tmp_path)
    expect = {"missing": "no such file", "truncated": "does not match", "flipped": "does not match",
              "garbage": "not a readable checkpoint"}
    for k, p in bad.items():
        res = run("train", *TINY, "trainer.max_epochs=3", f"resume={p}", f"paths.cache_dir={tmp_path / ('cache_' + k)}",
                  f"hydra.run.dir={tmp_path / ('run_' + k)}", cwd=tmp_path)
        _one_error_line(res, "resume=", bad[k].name, expect[k])
        assert not (tmp_path / ("cache_" + k)).exists(), f"{k}: data was prepared before the checkpoint was checked"


def test_checkpoint_without_sidecar_or_of_another_model_is_refused(trained, tmp_path):
    tmp, out = trained
    bare = tmp_path / "bare.ckpt"
    bare.write_bytes((out / "checkpoints" / "last.ckpt").read_bytes())
    with pytest.raises(CheckpointError, match=r"resume=.*bare\.ckpt: no checksum file .*bare\.ckpt\.sha256"):
        verify_checkpoint(bare, "resume")
    with pytest.raises(CheckpointError, match="not a regular file"):
        verify_checkpoint(out / "checkpoints", "resume")
    with pytest.raises(CheckpointError, match="empty"):
        verify_checkpoint("", "resume")
    # a truncated file whose sidecar was recomputed still is no checkpoint
    trunc = tmp_path / "t.ckpt"
    trunc.write_bytes(bare.read_bytes()[:-100])
    write_sidecar(trunc)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        verify_checkpoint(trunc, "resume")
    # the verified checkpoint against a wider model: one line, before Lightning loads it
    import torch

    from recsys.models.sequential import SASRec
    from recsys.training.losses import FullSoftmaxCE
    from recsys.training.sequence.module import SequentialRecModule

    info = verify_checkpoint(out / "checkpoints" / "last.ckpt", "resume")
    n_items = _summary(out)["data"]["n_items"]
    wide = SequentialRecModule(SASRec(n_items, max_len=10, hidden=32), FullSoftmaxCE(), torch.optim.Adam)
    with pytest.raises(CheckpointError, match="another model configuration"):
        check_compatible(info, wide, "resume")


# ---- a valid resume and its epoch counts ---------------------------------------------
def test_valid_checkpoint_resumes_and_summary_reports_the_epochs_that_ran(trained):
    tmp, out = trained
    last = out / "checkpoints" / "last.ckpt"
    resumed = tmp / "resumed"
    res = run("train", *TINY, "trainer.max_epochs=3", f"resume={last}", f"paths.cache_dir={tmp / 'cache'}",
              f"hydra.run.dir={resumed}", cwd=tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    s = _summary(resumed)
    t = s["timings"]
    assert (t["epochs_run"], t["epochs_total"], t["epochs"]) == (1, 3, 1)
    assert t["optimizer_steps_total"] > t["optimizer_steps_run"] > 0
    assert s["resumed_from"]["path"] == str(last) and s["resumed_from"]["epochs"] == 2
    assert s["resumed_from"]["sha256"] == sha256_file(last)
    assert sorted(p.name for p in (resumed / "checkpoints").glob("*")) == [
        "epoch002.ckpt", "epoch002.ckpt.sha256", "last.ckpt", "last.ckpt.sha256"]


# ---- sizes that train zero steps -------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_split():
    from recsys.data.splits import LeaveOneOut

    rows = [(f"u{u}", f"i{(u * 3 + k) % 9}", float(k)) for u in range(12) for k in range(6)]
    data = prepared(rows)
    return data, LeaveOneOut().split(data)


@pytest.mark.parametrize("bad", [-5, 0, 2.5, True, "8"])
def test_batch_size_that_cannot_train_is_refused_by_the_data_modules(tiny_split, bad):
    from recsys.training.sequence.data import SequenceDataModule
    from recsys.training.two_tower.data import TwoTowerDataModule

    data, split = tiny_split
    with pytest.raises(RecsysError, match=r"datamodule\.batch_size must be a positive integer"):
        SequenceDataModule(split, data.n_items, max_len=5, batch_size=bad)
    with pytest.raises(RecsysError, match=r"datamodule\.eval_batch_size must be a positive integer"):
        SequenceDataModule(split, data.n_items, max_len=5, eval_batch_size=bad)
    with pytest.raises(RecsysError, match=r"datamodule\.loader\.batch_size must be a positive integer"):
        TwoTowerDataModule(data, split, max_history=5, loader={"batch_size": bad})


def test_a_split_with_no_training_sequences_is_refused_by_the_data_module():
    from recsys.data.splits import LeaveOneOut
    from recsys.training.sequence.data import SequenceDataModule

    data = prepared([(f"u{u}", f"i{(u + k) % 7}", float(k)) for u in range(5) for k in range(3)])  # 1 train item each
    split = LeaveOneOut().split(data)
    with pytest.raises(RecsysError, match="no training sequences"):
        SequenceDataModule(split, data.n_items, max_len=5)


def test_negative_batch_size_is_refused_by_the_cli(tmp_path):
    res = run("train", *TINY, "trainer.max_epochs=1", "datamodule.batch_size=-5", f"paths.cache_dir={tmp_path / 'c'}",
              f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    _one_error_line(res, "datamodule.batch_size", "-5")
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_fit_of_zero_optimizer_steps_writes_no_summary(trained, tmp_path):
    tmp, _ = trained
    res = run("train", *TINY, "trainer.max_epochs=1", "+trainer.limit_train_batches=0",
              f"paths.cache_dir={tmp / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    _one_error_line(res, "0 optimizer steps")
    assert not (tmp_path / "run" / "summary.json").exists() and not (tmp_path / "run" / "model").exists()
