"""`recsys data erase`: erasure that follows identity links, keeps every other
user's features, reaches every artifact it is given, says what it did not reach,
verifies, is all-or-nothing and never reinterprets an id. Also `items=` for
`features build` / `features skew` (DictConfig's `.items` method shadowed it)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tests.helpers import run

DAY = 86400.0
T0 = 1_700_000_000.0
VICTIM = "u3"
SPECIAL = ("1_0", "10")  # Hydra reads 1_0 as the int 10


def _log(seed: int = 0, n_users: int = 24, n_items: int = 15) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Events without `category` (items table beside them): per user, anonymous
    pre-login views on the user's device, a login, then 60 days of activity
    (so a 30d TTL matters); u1 and u2 share a device; '1_0' and '10' are users."""
    rng = np.random.default_rng(seed)
    users = [f"u{i}" for i in range(n_users)] + list(SPECIAL)
    rows = []

    def ev(u, item, t, kind, value, session, device):
        rows.append({"user_id": u, "item_id": item, "timestamp": float(t), "event_type": kind,
                     "value": value, "session_id": session, "device_id": device})

    for j, u in enumerate(users):
        dev = "dshared" if u in ("u1", "u2") else f"d_{u}"
        start = T0 - 60 * DAY + j * 100.0
        for k in range(int(rng.integers(2, 5))):  # anonymous, before logging in
            ev(f"anon_{u}", f"i{rng.integers(n_items)}", start + k, "view", float(rng.integers(1, 60)),
               f"s_{u}_0", dev)
        ev(u, "", start + 10, "login", None, f"s_{u}_1", dev)
        for k in range(int(rng.integers(15, 40))):
            kind = rng.choice(["view", "click", "add_to_cart", "purchase"], p=[0.6, 0.25, 0.1, 0.05])
            ev(u, f"i{rng.integers(n_items)}", start + 20 + rng.uniform(0, 59 * DAY), kind,
               float(rng.integers(1, 60)) if kind == "view" else None, f"s_{u}_{2 + k // 6}", dev)
    ev("anon_lonely", "i1", T0 - DAY, "view", 3.0, "s_lonely", "d_lonely")  # never linked
    events = pl.DataFrame(rows, schema={"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Float64,
                                        "event_type": pl.String, "value": pl.Float64, "session_id": pl.String,
                                        "device_id": pl.String})
    items = pl.DataFrame({"item_id": [f"i{i}" for i in range(n_items)],
                          "category": [f"c{i % 3}" for i in range(n_items)]})
    return events.sort("timestamp"), items


def _run_dir(root: Path, events: pl.DataFrame) -> Path:
    """A training-run-like folder: embeddings/{items,users,seen}.parquet + an index bundle."""
    from recsys.retrieval.build import IndexSpec, build_bundle
    from recsys.artifacts.embeddings import write_embedding_dir

    rng = np.random.default_rng(1)
    acts = events.filter(pl.col("event_type") != "login")
    users = sorted(acts.filter(~pl.col("user_id").str.starts_with("anon_"))["user_id"].unique().to_list())
    items = sorted(acts["item_id"].unique().to_list())
    seen = acts.filter(pl.col("user_id").is_in(users)).select("user_id", "item_id").unique().sort("user_id", "item_id")
    run_dir = root / "run"
    write_embedding_dir(run_dir, {"item_id": np.array(items), "embedding": rng.normal(size=(len(items), 8))},
                        users={"user_id": np.array(users), "embedding": rng.normal(size=(len(users), 8))},
                        seen={"user_id": seen["user_id"].to_numpy(), "item_id": seen["item_id"].to_numpy()},
                        meta={"metric": "ip", "model": "test"})
    build_bundle(run_dir, root / "index", IndexSpec(), recall_queries=10)
    return run_dir


def _cache(root: Path, events: pl.DataFrame) -> Path:
    """A prepared-data cache with one dataset holding every user and one without the victim."""
    from recsys.data.prepare import save_prepared
    from tests.helpers import prepared

    acts = events.filter(pl.col("event_type") != "login")
    cache = root / "cache"
    for name, df in (("all-0123456789abcdef", acts), ("others-0123456789abcdef",
                                                        acts.filter(~pl.col("user_id").str.contains(VICTIM)))):
        data = prepared(list(zip(df["user_id"], df["item_id"], df["timestamp"])))
        save_prepared(data, cache / name)
    return cache


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Events + items, a `features build` with TTL and identity resolution, a run, an index, a cache."""
    root = tmp_path_factory.mktemp("erase_world")
    events, items = _log()
    events.write_parquet(root / "events.parquet")
    items.write_parquet(root / "items.parquet")
    res = run("features", "build", f"events={root / 'events.parquet'}", f"items={root / 'items.parquet'}",
              "ttl=30d", f"out={root / 'features'}", f"hydra.run.dir={root / 'build_run'}", cwd=root)
    assert res.returncode == 0, res.stderr  # items= used to fail: cfg.items is DictConfig.items
    _run_dir(root, events)
    _cache(root, events)
    return root


def _copy(world: Path, dst: Path) -> Path:
    for name in ("events.parquet", "items.parquet", "features", "run", "index", "cache"):
        src = world / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst / name)
    return dst


def _full_args(d: Path, user: str = VICTIM) -> list[str]:
    return [f"user_id={user}", f"events={d / 'events.parquet'}", f"features_dir={d / 'features'}",
            f"run={d / 'run'}", f"index_bundle={d / 'index'}", f"cache_dir={d / 'cache'}"]


def _user_rows(features: Path, exclude: set[str]) -> dict[str, pl.DataFrame]:
    out = {}
    for entity in ("user", "user_item", "user_category"):
        df = pl.read_parquet(features / f"{entity}.parquet").filter(~pl.col("user_id").is_in(sorted(exclude)))
        out[entity] = df.sort([c for c in ("user_id", "item_id", "category") if c in df.columns])
    return out


def test_items_option_works_for_build(world):
    cats = pl.read_parquet(world / "features" / "user_category.parquet")["category"].unique().to_list()
    assert sorted(cats) == ["c0", "c1", "c2"]  # joined from items=, not "unknown"
    manifest = json.loads((world / "features" / "manifest.json").read_text())
    assert manifest["settings"]["items"] == str((world / "items.parquet").resolve())
    assert manifest["settings"]["resolve_identities"] and manifest["ttl"] == "30d"


def test_items_option_works_for_skew(world, tmp_path):
    from recsys.features import batch
    from recsys.features.definitions import build_feature_set
    from recsys.features.events import scan_events

    manifest = json.loads((world / "features" / "manifest.json").read_text())
    fs = build_feature_set(manifest["config"])
    q = T0 - 5 * DAY
    lf = scan_events(str(world / "events.parquet"), items=str(world / "items.parquet"))
    snap = batch.snapshot(lf, fs, q, None, entities=["user_category"])["user_category"].head(20)
    snap.with_columns(timestamp=pl.lit(q)).write_parquet(tmp_path / "logged.parquet")
    res = run("features", "skew", f"logged={tmp_path / 'logged.parquet'}", f"events={world / 'events.parquet'}",
              f"items={world / 'items.parquet'}", "entity=user_category", f"hydra.run.dir={tmp_path / 'r'}",
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["total_mismatches"] == 0 and s["n_features"] > 3  # categories matched: rows joined from items=


def test_full_erasure_follows_identity_and_keeps_other_users(world, tmp_path):
    from recsys.features.online import OnlineFeatures
    from recsys.serving.index import IndexRuntime

    d = _copy(world, tmp_path)
    before = _user_rows(d / "features", {VICTIM})
    old_events = pl.read_parquet(d / "events.parquet")
    assert old_events.filter(pl.col("user_id") == f"anon_{VICTIM}").height > 0
    rt = IndexRuntime(d / "index")
    other_hits = rt.search_users(["u4"], k=5, exclude_seen=True).ids.tolist()
    n_index_users = len(rt.user_ids)
    from recsys.features.definitions import build_feature_set

    manifest = json.loads((d / "features" / "manifest.json").read_text())
    fs = build_feature_set(manifest["config"])
    q = manifest["as_of"]
    online_before = OnlineFeatures.load(d / "features" / "online_state", fs)
    reads_before = {u: online_before.read_user(u, q) for u in ("u1", "u4", "10")}

    res = run("data", "erase", *_full_args(d), f"hydra.run.dir={tmp_path / 'erase'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    s = json.loads((tmp_path / "erase" / "summary.json").read_text())
    assert s["changed"] == ["events", "features_dir", "online_state", "run", "index", "cache"]
    # the artifact types this test does not build are named, never claimed (tests/test_erasure_complete.py
    # builds every type)
    assert s["not_given"] == ["identity", "decision_log", "ab_archive", "state", "registry"]
    assert s["not_erased"] == [] and s["complete"] is False
    assert "erasure NOT complete (not given: identity, decision_log, ab_archive, state, registry)" in res.stdout

    ev = pl.read_parquet(d / "events.parquet")
    # the anonymous pre-login events and the user's device went with the user
    assert ev.filter(pl.col("user_id").is_in([VICTIM, f"anon_{VICTIM}"])).height == 0
    assert ev.filter(pl.col("device_id") == f"d_{VICTIM}").height == 0
    removed = old_events.height - ev.height
    assert removed == old_events.filter(pl.col("device_id") == f"d_{VICTIM}").height
    assert s["artifacts"]["events"]["events_removed_through_identity_links"] > 0
    assert ev.filter(pl.col("user_id") == "anon_lonely").height == 1  # unlinked anonymous id kept

    # every other user's rows are identical (TTL 30d and identity resolution kept)
    after = _user_rows(d / "features", {VICTIM})
    for entity in before:
        assert before[entity].equals(after[entity]), entity
    users = pl.read_parquet(d / "features" / "user.parquet")["user_id"].to_list()
    assert VICTIM not in users and f"anon_{VICTIM}" not in users and not any(u.startswith("anon_u") for u in users)
    manifest = json.loads((d / "features" / "manifest.json").read_text())
    assert manifest["ttl"] == "30d" and manifest["erasures"] == 1

    # a fresh build of the erased events has no anon_<victim> entity either
    res2 = run("features", "build", f"events={d / 'events.parquet'}", f"items={d / 'items.parquet'}", "ttl=30d",
               f"as_of={manifest['as_of']}", "online_state=false", f"out={tmp_path / 'fresh'}",
               f"hydra.run.dir={tmp_path / 'fresh_run'}", cwd=tmp_path)
    assert res2.returncode == 0, res2.stderr
    fresh = pl.read_parquet(tmp_path / "fresh" / "user.parquet")["user_id"].to_list()
    assert f"anon_{VICTIM}" not in fresh and VICTIM not in fresh

    online = OnlineFeatures.load(d / "features" / "online_state", fs)
    assert VICTIM not in online.tables["user"].index and f"anon_{VICTIM}" not in online.tables["user"].index
    for u, before_u in reads_before.items():  # other users' online features unchanged
        after_u = online.read_user(u, q)
        assert after_u.keys() == before_u.keys()
        np.testing.assert_allclose(list(after_u.values()), list(before_u.values()), rtol=1e-12, err_msg=u)

    # run embeddings and the index bundle: victim gone, the bundle still verifies and serves others
    from recsys.artifacts.embeddings import read_seen, read_user_embeddings

    assert VICTIM not in read_user_embeddings(d / "run").ids.tolist()
    assert VICTIM not in read_seen(d / "run")[0].tolist()
    rt = IndexRuntime(d / "index")  # verifies manifest.sha256 and every file's sha256
    assert VICTIM not in rt.user_ids.tolist() and len(rt.user_ids) == n_index_users - 1
    assert rt.search_users(["u4"], k=5, exclude_seen=True).ids.tolist() == other_hits
    with pytest.raises(Exception, match="unknown user id"):
        rt.search_users([VICTIM], k=5)
    # cache: the dataset holding the user is deleted, the other one kept
    assert sorted(p.name for p in (d / "cache").iterdir()) == ["others-0123456789abcdef"]

    ok = run("data", "erase", *_full_args(d), "verify=true", f"hydra.run.dir={tmp_path / 'verify'}", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "no trace of the user" in ok.stdout
    assert json.loads((tmp_path / "verify" / "summary.json").read_text())["clean"] is True


def test_partial_erasure_says_what_was_not_reached_and_verify_finds_it(world, tmp_path):
    d = _copy(world, tmp_path)
    res = run("data", "erase", f"user_id={VICTIM}", f"events={d / 'events.parquet'}",
              f"hydra.run.dir={tmp_path / 'erase'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    s = json.loads((tmp_path / "erase" / "summary.json").read_text())
    assert s["complete"] is False and s["changed"] == ["events"]
    assert s["not_given"] == ["identity", "features_dir", "online_state", "run", "index", "cache", "decision_log",
                              "ab_archive", "state", "registry"]
    assert "erasure NOT complete" in res.stdout and "not given: identity, features_dir, online_state, run, index, " \
        "cache, decision_log, ab_archive, state, registry" in res.stdout
    assert "nothing of the user remains" not in res.stdout

    bad = run("data", "erase", *_full_args(d), "verify=true", f"hydra.run.dir={tmp_path / 'verify'}", cwd=tmp_path)
    assert bad.returncode == 2
    assert "traces of user 'u3' remain" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    v = json.loads((tmp_path / "verify" / "summary.json").read_text())
    where = {Path(h["path"]).name for h in v["traces"]}
    assert {"user.parquet", "users.parquet", "seen.parquet", "user_ids.npy"} <= where
    assert json.loads((d / "features" / "manifest.json").read_text()).get("erasures") is None  # verify changed nothing

    # finishing the erasure: the user is no longer in the events, but still elsewhere
    res = run("data", "erase", *_full_args(d), f"hydra.run.dir={tmp_path / 'erase2'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert run("data", "erase", *_full_args(d), "verify=true", f"hydra.run.dir={tmp_path / 'v2'}",
               cwd=tmp_path).returncode == 0
    again = run("data", "erase", *_full_args(d), f"hydra.run.dir={tmp_path / 'erase3'}", cwd=tmp_path)
    assert again.returncode == 2 and "unknown user id" in again.stderr


def _state(d: Path) -> dict[Path, bytes | None]:
    return {p: (p.read_bytes() if p.is_file() else None) for p in sorted(d.rglob("*"))}


def test_failure_midway_leaves_every_artifact_unchanged(world, tmp_path, monkeypatch):
    from recsys.features import erasure
    from recsys.features.erasure import erase

    d = _copy(world, tmp_path)
    snap = _state(d)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(erase, "stage_index_bundle", boom)  # after events + features + run were staged
    targets = erasure.Targets(events=d / "events.parquet", features_dir=d / "features", runs=[d / "run"],
                              indexes=[d / "index"], cache_dir=d / "cache")
    with pytest.raises(RuntimeError, match="disk full"):
        erasure.erase_user(VICTIM, targets)
    assert _state(d) == snap  # no change, no temp file or folder left


def test_commit_failure_rolls_back(world, tmp_path, monkeypatch):
    from recsys.features import erasure
    from recsys.features.erasure import transaction

    d = _copy(world, tmp_path)
    snap = _state(d)
    real = transaction.os.replace
    calls = {"n": 0}

    def flaky(a, b):
        if ".erase-new-" in Path(a).name:  # swapping a new version in
            calls["n"] += 1
            if calls["n"] == 3:  # events and a feature file are already swapped
                raise OSError("I/O error")
        return real(a, b)

    monkeypatch.setattr(transaction.os, "replace", flaky)
    with pytest.raises(OSError):
        erasure.erase_user(VICTIM, erasure.Targets(events=d / "events.parquet", features_dir=d / "features",
                                                   runs=[d / "run"], indexes=[d / "index"]))
    assert calls["n"] == 3 and _state(d) == snap


def test_id_is_a_string_never_a_number(world, tmp_path):
    d = _copy(world, tmp_path)
    before = pl.read_parquet(d / "events.parquet")
    n10 = before.filter(pl.col("user_id") == "10").height
    assert n10 > 0 and before.filter(pl.col("user_id") == "1_0").height > 0

    # unquoted, Hydra reads 1_0 as 10: refused, or (with the CLI fix) read as '1_0'; never erases '10'
    res = run("data", "erase", "user_id=1_0", f"events={d / 'events.parquet'}",
              f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    mid = pl.read_parquet(d / "events.parquet")
    assert mid.filter(pl.col("user_id") == "10").height == n10
    if res.returncode == 2:
        assert "quote it" in res.stderr and mid.height == before.height
    else:
        assert res.returncode == 0 and mid.filter(pl.col("user_id") == "1_0").height == 0

    res = run("data", "erase", "user_id='1_0'", f"events={d / 'events.parquet'}", f"features_dir={d / 'features'}",
              f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path)
    after = pl.read_parquet(d / "events.parquet")
    assert after.filter(pl.col("user_id").is_in(["1_0", "anon_1_0"])).height == 0
    assert after.filter(pl.col("user_id") == "10").height == n10
    assert "10" in pl.read_parquet(d / "features" / "user.parquet")["user_id"].to_list()
    if mid.filter(pl.col("user_id") == "1_0").height:  # first call refused: this one erased
        assert res.returncode == 0, res.stderr


def test_files_it_cannot_rewrite_are_reported_not_claimed(world, tmp_path):
    from recsys.features import erasure

    d = _copy(world, tmp_path)
    stray = d / "run" / "predictions.parquet"
    pl.DataFrame({"user_id": [VICTIM, "u4"], "item_id": ["i1", "i2"]}).write_parquet(stray)
    (d / "run" / "model").mkdir()
    (d / "run" / "model" / "weights.safetensors").write_bytes(b"\0" * 16)
    targets = erasure.Targets(events=d / "events.parquet", features_dir=d / "features", runs=[d / "run"],
                              indexes=[d / "index"], cache_dir=d / "cache")
    res = erasure.erase_user(VICTIM, targets)
    assert res["complete"] is False
    assert res["not_given"] == ["identity", "decision_log", "ab_archive", "state", "registry"]
    assert {Path(h["path"]).name for h in res["not_erased"]} == {"predictions.parquet", "weights.safetensors"}
    assert any("NOT ERASED" in line and "predictions.parquet" in line for line in erasure.report_lines(res))
    v = erasure.verify_erased(VICTIM, targets)
    assert not v["clean"] and {Path(h["path"]).name for h in v["traces"]} == {"predictions.parquet",
                                                                               "weights.safetensors"}


def test_a_parsed_number_is_never_taken_as_an_id():
    from omegaconf import OmegaConf

    from recsys.cli.erase_args import erase_user_id
    from recsys.utils.errors import DataError

    assert erase_user_id(OmegaConf.create({"user_id": "1_0"})) == "1_0"
    with pytest.raises(DataError, match="quote it"):
        erase_user_id(OmegaConf.create({"user_id": 10}))
