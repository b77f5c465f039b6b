"""The snapshot's sorted pass (recsys.features.sorted_pass) and its encoding: every
way of running it (chunk sizes, worker threads, packed or argsorted keys, the
category in the key or not) gives the same accumulators, and the threaded path
gives the very same bits as the serial one."""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.features import asof, batch, sorted_pass
from recsys.features.definitions import ENTITIES, SOURCES, build_feature_set
from recsys.features.encode import dict_codes, encode_events
from recsys.features.events import scan_events
from recsys.features.session_counts import session_counts
from tests.test_features_equality import CFG, _assert_close, _keys, random_events


def _by_key(res: dict, entity: str) -> dict:
    vals, keys = res[entity]
    rows = list(zip(*(keys[c].tolist() for c in ENTITIES[entity])))
    return {k: {n: v[i] for n, v in vals.items()} for i, k in enumerate(rows)}


def _assert_same_accumulators(a: dict, b: dict, what: str) -> None:
    for entity in a:
        ka, kb = _by_key(a, entity), _by_key(b, entity)
        assert ka.keys() == kb.keys(), f"{what}: {entity} keys"
        for key, va in ka.items():
            for name, x in va.items():
                _assert_close(np.array([x]), np.array([kb[key][name]]), f"{what}: {entity} {key} {name}")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 200), frac=st.floats(0.0, 1.1))
def test_sorted_pass_variants_agree(seed, n, frac):
    rng = np.random.default_rng(seed)
    ev = random_events(rng, n)
    as_of = float(ev["timestamp"].min() + frac * (ev["timestamp"].max() - ev["timestamp"].min())) + 1e-3
    fs = build_feature_set(CFG)
    enc = encode_events(scan_events(ev).collect(), as_of)
    accs = {e: fs.entity_accumulators(e) for e in fs.entities}
    base = sorted_pass.sorted_accumulators(enc, accs, as_of)
    variants = {"chunks of 3 rows": {"chunk": 3}, "chunks of 3 rows on 2 threads": {"chunk": 3, "threads": 2},
                "category in the key": {"cat_in_key": True, "chunk": 5}, "argsort": {"pack": False, "chunk": 4}}
    for what, kw in variants.items():
        _assert_same_accumulators(base, sorted_pass.sorted_accumulators(enc, accs, as_of, **kw), what)


def test_threads_give_the_same_bits(monkeypatch):
    rng = np.random.default_rng(5)
    ev = random_events(rng, 3000)
    fs = build_feature_set(CFG)
    as_of = float(ev["timestamp"].max()) + 1.0
    for chunk in (7, 1000):
        monkeypatch.setattr(sorted_pass, "CHUNK", chunk)
        serial = batch.snapshot_accumulators(ev, fs, as_of, threads=1)
        threaded = batch.snapshot_accumulators(ev, fs, as_of, threads=2)
        for entity, df in serial.items():
            assert df.equals(threaded[entity]), (entity, chunk)


def test_items_with_several_categories_put_the_category_in_the_key():
    """An item seen under two categories: user x category still matches the as-of path."""
    rng = np.random.default_rng(11)
    ev = random_events(rng, 400)
    ev = ev.with_columns(category=pl.Series([f"c{k}" for k in rng.integers(0, 3, len(ev))]))
    fs = build_feature_set(CFG)
    q = float(ev["timestamp"].quantile(0.7))
    lf = scan_events(ev)
    enc = encode_events(ev, q)
    assert sorted_pass.item_category(enc.ids["item_id"], enc.ids["category"], len(enc.dicts["item_id"])) is None
    snap = batch.snapshot(lf, fs, q, None)
    for entity, df in snap.items():
        past = asof.asof_features(lf, fs, entity, df.select(ENTITIES[entity]).with_columns(timestamp=pl.lit(q)), None)
        for name in past:
            _assert_close(past[name], df[name].to_numpy(), f"{entity}.{name}")
    assert len(_keys(snap["user_category"], "user_category")) > len(snap["user"])


def test_a_failing_worker_raises_its_error(monkeypatch):
    rng = np.random.default_rng(2)
    ev = random_events(rng, 500)
    fs = build_feature_set(CFG)
    real = sorted_pass.run_chunk

    def boom(lo, *a, **kw):
        if lo > 0:
            raise RuntimeError("chunk failed")
        return real(lo, *a, **kw)

    monkeypatch.setattr(sorted_pass, "run_chunk", boom)
    monkeypatch.setattr(sorted_pass, "CHUNK", 50)
    with pytest.raises(RuntimeError, match="chunk failed"):
        batch.snapshot_accumulators(ev, fs, float(ev["timestamp"].max()) + 1.0, threads=2)


def test_dictionary_codes_unify_chunks_once_per_dictionary():
    shared = pa.array(["a", "b", "c"])
    other = pa.array(["c", "d", None])
    chunks = [pa.DictionaryArray.from_arrays(pa.array([0, 2, None], pa.int32()), shared),
              pa.DictionaryArray.from_arrays(pa.array([1, 1], pa.int32()), shared),
              pa.DictionaryArray.from_arrays(pa.array([0, 1, 2], pa.int32()), other)]
    codes, dictionary = dict_codes(pa.chunked_array(chunks))
    got = [dictionary[int(c)].as_py() if c >= 0 else None for c in codes]
    assert got == ["a", "c", None, "b", "b", "c", "d", None]
    assert len(dictionary) == 4  # a b c d; a null dictionary value is a null key (-1)
    plain, d2 = dict_codes(pa.chunked_array([pa.array(["x", None]), pa.array(["y", "x"])]))
    assert [d2[int(c)].as_py() if c >= 0 else None for c in plain] == ["x", None, "y", "x"]


def test_encoding_restores_the_arrow_memory_pool(tmp_path):
    path = tmp_path / "ev.parquet"
    random_events(np.random.default_rng(0), 50).write_parquet(path)
    before = pa.default_memory_pool().backend_name
    enc = encode_events(path, 1e9)
    assert pa.default_memory_pool().backend_name == before
    assert enc.n == 50 and (enc.code >= -1).all()


@pytest.mark.parametrize("shared", [False, True])
def test_session_counts_match_the_as_of_path(shared):
    """Session counts per user, also when one session id is used by several users
    (then sessions are (user, session) pairs), in small chunks."""
    rng = np.random.default_rng(3)
    ev = random_events(rng, 300)
    if shared:
        ev = ev.with_columns(session_id=pl.Series([f"s{k}" for k in rng.integers(0, 4, len(ev))]))
        assert ev.group_by("session_id").agg(pl.col("user_id").n_unique())["user_id"].max() > 1
    fs = build_feature_set(CFG)
    q = float(ev["timestamp"].quantile(0.8))
    lf = scan_events(ev)
    enc = encode_events(ev, q)
    sess = [a for a in fs.entity_accumulators("user") if SOURCES[a.source].session]
    small = session_counts(enc, sess, chunk=7)
    whole = session_counts(enc, sess)
    users = batch.snapshot(lf, fs, q, None)["user"]
    past = asof.asof_features(lf, fs, "user", users.select("user_id").with_columns(timestamp=pl.lit(q)), None)
    codes = {u: i for i, u in enumerate(enc.dicts["user_id"].to_pylist())}
    idx = np.array([codes[u] for u in users["user_id"].to_list()])
    for a in sess:
        np.testing.assert_array_equal(small[a.name], whole[a.name])
    _assert_close(users["user_sessions"].to_numpy(), past["user_sessions"], "sessions")
    _assert_close(whole["user:session_start:total"][idx], past["user_sessions"], "session starts")
    for name in ("user_abandon_rate", "user_nav_depth"):
        _assert_close(users[name].to_numpy(), past[name], name)


def test_parquet_row_group_path_equals_the_frame_path(tmp_path):
    """Row groups read on 2 threads (one empty, large strings; then no session /
    value columns and null categories) give the frames of the in-memory path."""
    import pyarrow.parquet as pq

    fs = build_feature_set(CFG)
    ev = random_events(np.random.default_rng(1), 300)
    q = float(ev["timestamp"].quantile(0.6))
    tab = ev.to_arrow()
    tab = tab.cast(pa.schema([(f.name, pa.large_string() if f.type in (pa.string(), pa.large_string(), pa.string_view())
                               else f.type) for f in tab.schema]))
    with pq.ParquetWriter(tmp_path / "a.parquet", tab.schema) as w:
        for lo, n in ((0, 100), (100, 0), (100, 200)):
            w.write_table(tab.slice(lo, n))
    ev2 = ev.drop("session_id", "value").with_columns(
        category=pl.when(pl.col("item_id") == "i1").then(None).otherwise(pl.col("category")))
    ev2.write_parquet(tmp_path / "b.parquet", row_group_size=50)
    for path, frame in ((tmp_path / "a.parquet", ev), (tmp_path / "b.parquet", ev2)):
        a = batch.snapshot_accumulators(path, fs, q, threads=2)
        b = batch.snapshot_accumulators(frame, fs, q, threads=1)
        for entity, df in a.items():
            keys = list(ENTITIES[entity])
            assert df.sort(keys, nulls_last=True).equals(b[entity].sort(keys, nulls_last=True)), (path.name, entity)


def test_balanced_parts_cover_every_chunk_once():
    sizes = [262_000] * 20 + [2_462_727, 602_238, 999_944]
    parts = sorted_pass.balanced_parts(sizes, 2)
    assert sorted(i for p in parts for i in p) == list(range(len(sizes)))
    assert all(p == sorted(p) for p in parts)
    loads = [sum(sizes[i] for i in p) for p in parts]
    assert max(loads) - min(loads) <= max(sizes[:20])
    assert sorted_pass.balanced_parts([], 2) == [[], []]
