"""Retire = archived and unloadable (issue 15, item 6): a retired version is refused in
one line by every way of loading through the registry (``resolve_champion`` by alias
or version number, ``Registry.resolve``), its artifact is moved to ``archived``, MLflow
shows it in the Archived stage, it cannot be promoted or rolled back to, and each
retirement is in the audit trail. ``retire_superseded`` archives the former champions
past their replacement, keeping the most recent rollback target."""
from __future__ import annotations

from pathlib import Path

import pytest

from recsys.lifecycle.registry import Registry, RegistryError
from recsys.lifecycle.resolve import resolve_champion
from recsys.utils.errors import RecsysError
from tests.helpers import ranker_run


@pytest.fixture(scope="module")
def reg(tmp_path_factory) -> Registry:
    base = tmp_path_factory.mktemp("retire")
    reg = Registry(base / "registry")
    for seed in range(3):
        run = ranker_run(base / f"run{seed}", n_parity_rows=50, train_steps=2, seed=seed)
        v = reg.register(run, "ctr", who="trainer-bot", why=f"seed {seed}")
        reg.promote("ctr", v.version, gates={}, who="alice", why=f"seed {seed}")
    return reg


def test_retire_superseded_keeps_the_rollback_target_and_archives_the_rest(reg):
    assert [(v.version, v.status) for v in reg.versions("ctr")] == [
        ("1", "superseded"), ("2", "superseded"), ("3", "champion")]
    v1_path = Path(reg.get("ctr", "1").path)
    assert resolve_champion("ctr@1", reg.dir) == v1_path  # loadable before
    assert reg.retire_superseded("ctr", keep=1, who="janitor", why="past its replacement") == ["1"]
    v1 = reg.get("ctr", "1")
    assert v1.status == "retired" and not v1_path.exists() and (v1_path.parent / "archived").is_dir()
    mv = reg.client.get_model_version("ctr", "1")
    assert mv.current_stage == "Archived" and mv.tags["recsys.archived"] == str(v1_path.parent / "archived")
    # unloadable through the registry, one line each
    for ref in ("ctr@1", "registry:ctr@1"):
        with pytest.raises(RecsysError, match=r"registry:ctr@1 -> v1 is retired \(archived at .*\): a retired "
                                              r"version cannot be loaded") as e:
            resolve_champion(ref, reg.dir)
        assert "\n" not in str(e.value)
    with pytest.raises(RegistryError, match="v1 is retired"):
        reg.resolve("ctr", "1")
    with pytest.raises(RegistryError, match="retired"):
        reg.promote("ctr", "1", gates={})
    with pytest.raises(RegistryError, match="already retired"):
        reg.retire("ctr", "1")
    # the others still load
    assert resolve_champion("ctr", reg.dir) == Path(reg.get("ctr", "3").path)
    assert resolve_champion("registry:ctr@2", reg.dir).is_dir()
    rec = [r for r in reg.audit.records() if r["action"] == "retire"]
    assert [(r["version"], r["who"], r["details"]["mlflow_stage"], r["details"]["previous_status"]) for r in rec] == [
        ("1", "janitor", "Archived", "superseded")]
    reg.audit.verify()


def test_rollback_never_reaches_a_retired_version_and_the_champion_cannot_be_retired(reg):
    with pytest.raises(RegistryError, match="is the champion"):
        reg.retire("ctr", "3")
    if reg.get("ctr", "1").status != "retired":
        reg.retire("ctr", "1")
    assert reg.rollback("ctr", who="alice").version == "2"
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback("ctr")  # v1 is retired: not a target
    with pytest.raises(RecsysError, match="no such registered model or version"):
        resolve_champion("ctr@9", reg.dir)
