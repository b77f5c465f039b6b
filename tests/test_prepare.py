"""Prepared-data cache: contiguous ids, fingerprint lineage, atomic writes."""
from __future__ import annotations

import numpy as np
import pytest

from recsys.data import prepare as P
from recsys.data.loaders import SeqTxtLoader
from recsys.utils.errors import DataError


def _seq(tmp_path, text="7 30 10 20\n3 10 5\n", name="s.txt"):
    path = tmp_path / name
    path.write_text(text)
    return SeqTxtLoader(str(path))


def test_ids_are_contiguous_with_zero_for_padding(tmp_path):
    data = P.prepare(_seq(tmp_path), tmp_path / "cache", "s")
    assert data.users.column("user_id").to_pylist() == ["3", "7"]  # numeric order
    assert data.items.column("item_id").to_pylist() == ["5", "10", "20", "30"]
    assert data.users.column("user_idx").to_pylist() == [1, 2]
    u, i, t = data.arrays()
    assert u.tolist() == [1, 1, 2, 2, 2]  # sorted by user then time
    assert i.tolist() == [2, 1, 4, 2, 3]  # user 3: 10, 5; user 7: 30, 10, 20
    assert t.tolist() == [0, 1, 0, 1, 2]


def test_cache_is_reused_and_keyed_by_content_and_config(tmp_path):
    cache = tmp_path / "cache"
    a = P.prepare(_seq(tmp_path), cache, "s")
    b = P.prepare(_seq(tmp_path), cache, "s")
    assert a.fingerprint == b.fingerprint and b.directory == a.directory
    assert b.interactions.equals(a.interactions)
    c = P.prepare(_seq(tmp_path), cache, "s", event_types=["click"])
    assert c.fingerprint != a.fingerprint
    d = P.prepare(_seq(tmp_path, text="7 30 10 20\n3 10 6\n"), cache, "s")
    assert d.fingerprint != a.fingerprint
    assert len(list(cache.iterdir())) == 3
    assert a.meta["sources"][0]["sha256"] != d.meta["sources"][0]["sha256"]


def test_failed_write_leaves_no_cache_folder(tmp_path, monkeypatch):
    cache = tmp_path / "cache"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(P.pq, "write_table", boom)
    with pytest.raises(OSError):
        P.prepare(_seq(tmp_path), cache, "s")
    assert not cache.exists() or list(cache.iterdir()) == []


def test_bad_input_leaves_no_cache_folder(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="bad.txt:2"):
        P.prepare(_seq(tmp_path, text="1 2\n2 x\n", name="bad.txt"), cache, "s")
    assert not cache.exists()


def test_truncated_cache_gives_a_clear_error(tmp_path):
    data = P.prepare(_seq(tmp_path), tmp_path / "cache", "s")
    path = data.directory / "interactions.parquet"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match="corrupt"):
        P.load_prepared(data.directory)


def test_filters(tmp_path):
    path = tmp_path / "r.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                    "1\t1\t5\t10\n1\t2\t2\t11\n2\t1\t4\t12\n")
    from recsys.data.loaders import RecBoleLoader

    data = P.prepare(RecBoleLoader(str(path)), None, "r", min_value=4.0)
    assert data.n_items == 1 and data.interactions.num_rows == 2
    assert np.all(data.interactions.column("value").to_numpy() >= 4)
    with pytest.raises(DataError, match="no interactions left"):
        P.prepare(RecBoleLoader(str(path)), None, "r", min_value=9.0)
