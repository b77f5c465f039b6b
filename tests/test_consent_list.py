"""The consent list honoured by feature building (``recsys features build consent=``):
users without consent, and the devices linked to them, leave no trace in the snapshot
or the online state; other users' features are those of a build without the list."""
from __future__ import annotations

import json

import polars as pl
import pytest

from recsys.features.consent import drop_without_consent, read_consent_list
from recsys.utils.errors import DataError
from tests.helpers import run


def test_read_consent_list_checks_the_file(tmp_path):
    good = tmp_path / "c.parquet"
    pl.DataFrame({"user_id": [1, 2, 3], "granted": [True, False, True]}).write_parquet(good)
    c = read_consent_list(good)
    assert c.revoked == {"2"} and c.granted == {"1", "3"}
    assert not c.allows("2") and c.allows("99") and not read_consent_list(good, default=False).allows("99")
    cases = {"user_id,consent\n1,true\n": "missing column 'granted'",
             "user_id,granted\n1,perhaps\n": "row 0: granted='perhaps'",
             "user_id,granted\n1,true\n1,false\n": "listed as both granted and revoked"}
    for i, (text, msg) in enumerate(cases.items()):
        p = tmp_path / f"bad{i}.csv"
        p.write_text(text)
        with pytest.raises(DataError, match=msg):
            read_consent_list(p)
    with pytest.raises(DataError, match="no such file"):
        read_consent_list(tmp_path / "absent.csv")


def test_drop_without_consent_uses_resolved_and_raw_ids():
    from recsys.features.consent import ConsentList

    consent = ConsentList(frozenset({"a"}), frozenset({"b"}), True, "x", "0")
    ev = pl.DataFrame({"user_id": ["a", "b", "b", "c"], "raw_user_id": ["a", "dev1", "b", "b"]})
    kept, info = drop_without_consent(ev, consent)
    assert kept["user_id"].to_list() == ["a"] and info == {"rows_dropped": 3, "users_dropped": 2}
    strict = ConsentList(frozenset({"a"}), frozenset(), False, "x", "0")
    assert drop_without_consent(ev.drop("raw_user_id"), strict)[0]["user_id"].to_list() == ["a"]


def test_features_build_drops_users_without_consent_and_their_devices(tmp_path):
    from recsys.data.synthetic import SyntheticConfig, generate_world
    from recsys.features.online import OnlineFeatures
    from recsys.features.definitions import build_feature_set

    w = generate_world(SyntheticConfig(n_users=40, n_items=30, n_categories=3, n_requests=10, seed=2))
    ev = pl.from_arrow(w.events).join(pl.from_arrow(w.items).select("item_id", "category"), on="item_id")
    ev = ev.with_columns(user_id=pl.col("user_id").cast(pl.Utf8), device_id=pl.lit(None, pl.Utf8),
                         session_id=pl.lit(None, pl.Utf8))
    # an anonymous device of user 7, linked to the account by one login
    t0 = float(ev["timestamp"].min())
    anon = ev.filter(pl.col("user_id") == "7").head(3).with_columns(user_id=pl.lit("anon-7"),
                                                                      device_id=pl.lit("dev-7"))
    login = anon.head(1).with_columns(user_id=pl.lit("7"), event_type=pl.lit("login"), timestamp=pl.lit(t0))
    events = pl.concat([ev, anon, login.select(ev.columns)]).sort("timestamp")
    path = tmp_path / "events.parquet"
    events.write_parquet(path)
    consent = tmp_path / "consent.csv"
    consent.write_text("user_id,granted\n7,false\n8,true\n")
    never = tmp_path / "never.parquet"  # the same events without the user and the device: the reference
    events.filter(~pl.col("user_id").is_in(["7", "anon-7"])).write_parquet(never)
    as_of = f"as_of={float(events['timestamp'].max()) + 1.0}"
    out, plain, full = tmp_path / "with", tmp_path / "without", tmp_path / "full"
    for o, src, extra in ((out, path, [f"consent={consent}"]), (plain, never, []), (full, path, [])):
        res = run("features", "build", f"events={src}", f"out={o}", f"hydra.run.dir={o}_run", as_of, *extra,
                  cwd=tmp_path)
        assert res.returncode == 0, res.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["consent"]["rows_dropped"] == events.filter(pl.col("user_id").is_in(["7", "anon-7"])).height
    for entity in ("user", "user_item", "user_category"):
        got, ref = pl.read_parquet(out / f"{entity}.parquet"), pl.read_parquet(plain / f"{entity}.parquet")
        assert not got.filter(pl.col("user_id").is_in(["7", "anon-7"])).height
        assert pl.read_parquet(full / f"{entity}.parquet").filter(pl.col("user_id") == "7").height  # without the list
        keys = [c for c in ("user_id", "item_id", "category") if c in got.columns]
        assert got.sort(keys).equals(ref.sort(keys).select(got.columns))  # = a build that never had them
    fs = build_feature_set(manifest["config"])
    online = OnlineFeatures.load(out / "online_state", fs)
    assert "7" not in online.tables["user"].index and "anon-7" not in online.tables["user"].index
    # erasing another user rebuilds these features with the same consent list: user 7 stays out
    res = run("data", "erase", "user_id=9", f"events={path}", f"features_dir={out}", f"hydra.run.dir={tmp_path / 'e'}",
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    after = pl.read_parquet(out / "user.parquet")
    assert not after.filter(pl.col("user_id").is_in(["7", "anon-7", "9"])).height and after.height == 38
    bad = run("features", "build", f"events={path}", f"out={tmp_path / 'x'}", f"consent={tmp_path / 'none.csv'}",
              f"hydra.run.dir={tmp_path / 'xr'}", cwd=tmp_path)
    assert bad.returncode == 2 and "none.csv" in bad.stderr and not (tmp_path / "x").exists()
