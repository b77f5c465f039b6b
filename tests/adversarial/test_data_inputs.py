"""Hostile data files (issue 17, item 11): a UTF-8 byte-order mark at the start of a
text input, and exact duplicate events (counted, warned about once, kept unless
``drop_duplicates``)."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data import prepare as P
from recsys.data.loaders import CsvLoader, ParquetLoader, RecBoleLoader, SeqTxtLoader, validate_file
from recsys.utils.errors import DataError

BOM = b"\xef\xbb\xbf"


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _pairs(data) -> list[tuple[str, str, float]]:
    e = data.events
    return list(zip(e.column("user_id").to_pylist(), e.column("item_id").to_pylist(), e.column("timestamp").to_pylist()))


# ----------------------------------------------------------------------------- byte-order mark

@pytest.mark.parametrize("delimiter", [",", "\t", ";"])
def test_csv_with_bom_reads_the_first_column_by_name(tmp_path, delimiter):
    text = delimiter.join(["user_id", "item_id", "timestamp"]) + "\n" + delimiter.join(["u1", "i1", "5"]) + "\n"
    path = _write(tmp_path, "bom.csv", BOM + text.encode())
    data = CsvLoader(path, delimiter=delimiter).load()  # old code: "column 'user_id': column not found ... \ufeffuser_id"
    assert _pairs(data) == [("u1", "i1", 5.0)]
    assert data.timestamp_kind == "unix"


def test_csv_with_bom_and_quoted_header_and_mapping(tmp_path):
    path = _write(tmp_path, "q.csv", BOM + b'"user","item"\n"a","b"\n"a","c"\n')
    data = CsvLoader(path, columns={"user_id": "user", "item_id": "item"}).load()
    assert [p[:2] for p in _pairs(data)] == [("a", "b"), ("a", "c")]


def test_recbole_and_side_table_with_bom(tmp_path):
    inter = _write(tmp_path, "d.inter", BOM + b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                              b"1\t10\t4\t100\n")
    item = _write(tmp_path, "d.item", BOM + b"item_id:token\tgenre:token_seq\n10\ta b\n")
    data = RecBoleLoader(inter, item_path=item).load()
    assert _pairs(data) == [("1", "10", 100.0)]
    assert data.items.column_names == ["item_id", "genre"]
    assert data.items.column("genre").to_pylist() == [["a", "b"]]


def test_seqtxt_with_bom(tmp_path):
    path = _write(tmp_path, "s.txt", BOM + b"1 2 3\n4 5\n")
    data = SeqTxtLoader(path).load()  # old code: "expected an integer id, got token '\ufeff1'"
    assert data.events.column("user_id").to_pylist() == ["1", "1", "4"]


def test_validate_file_with_bom_and_line_numbers_unchanged(tmp_path):
    good = _write(tmp_path, "ok.csv", BOM + b"user_id,item_id,timestamp\n1,2,3\n")
    assert validate_file(str(good), "csv")["n_rows"] == 1
    bad = _write(tmp_path, "bad.csv", BOM + b"user_id,item_id,timestamp\n1,2,3\n1,3,-4\n")
    with pytest.raises(DataError, match=r"bad\.csv:3: column 'timestamp': negative timestamp"):
        validate_file(str(bad), "csv")


@pytest.mark.parametrize("data, phrase", [
    (b"\xff\xfeu\x00,\x00", "UTF-16/UTF-32 byte-order mark: save the file as UTF-8"),
    (b"\xfe\xff\x00u", "UTF-16/UTF-32 byte-order mark"),
    (BOM, "empty file (only a UTF-8 byte-order mark)"),
])
def test_other_boms_and_bom_only_files_are_one_line_errors(tmp_path, data, phrase):
    path = _write(tmp_path, "x.csv", data)
    with pytest.raises(DataError) as e:
        CsvLoader(path).load()
    assert phrase in str(e.value) and str(e.value).startswith(str(path)) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- exact duplicates

DUP_CSV = (b"user_id,item_id,timestamp,rating\n"
           b"u1,i1,10,5\n"
           b"u1,i2,11,4\n"
           b"u1,i1,10,5\n"   # exact duplicate of line 2
           b"u2,i1,10,5\n"   # other user
           b"u1,i1,10,3\n"   # same user, item, time; other rating: not exact
           b"u1,i1,10,5\n")  # a third copy of line 2


def _dup_loader(tmp_path: Path) -> CsvLoader:
    return CsvLoader(_write(tmp_path, "dup.csv", DUP_CSV), columns={"value": "rating"})


def test_exact_duplicates_are_counted_warned_once_and_kept(tmp_path):
    with pytest.warns(P.DuplicateEventsWarning, match=r"dataset 'dup': 2 of 6 events are exact duplicates") as rec:
        data = P.prepare(_dup_loader(tmp_path), tmp_path / "cache", "dup")
    assert len(rec) == 1
    assert data.meta["n_exact_duplicates"] == 2
    assert data.interactions.num_rows == data.meta["n_interactions"] == 6  # kept: results do not change
    # the default keeps the fingerprint of the old code (no new key in the filters): old caches stay valid
    assert data.fingerprint == P.fingerprint(_dup_loader(tmp_path), {"event_types": None, "min_value": None})[0]
    with pytest.warns(P.DuplicateEventsWarning, match="2 of 6"):  # a cache hit says it again
        again = P.prepare(_dup_loader(tmp_path), tmp_path / "cache", "dup")
    assert again.directory == data.directory and again.meta["n_exact_duplicates"] == 2


def test_drop_duplicates_keeps_the_first_of_each(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = P.prepare(_dup_loader(tmp_path), tmp_path / "cache", "dup", drop_duplicates=True)
    assert data.meta["n_exact_duplicates"] == 2 and data.meta["filters"]["drop_duplicates"] is True
    assert data.interactions.num_rows == 4
    u, i, t = data.arrays()
    v = data.interactions.column("value").to_pylist()
    assert sorted(zip(u.tolist(), i.tolist(), t.tolist(), v)) == [(1, 1, 10.0, 3.0), (1, 1, 10.0, 5.0),
                                                                   (1, 2, 11.0, 4.0), (2, 1, 10.0, 5.0)]
    with pytest.warns(P.DuplicateEventsWarning):
        default = P.prepare(_dup_loader(tmp_path), tmp_path / "cache", "dup")
    assert default.fingerprint != data.fingerprint


def test_validate_file_reports_exact_duplicates(tmp_path):
    path = _write(tmp_path, "dup.csv", DUP_CSV)
    assert validate_file(str(path), "csv", columns={"value": "rating"})["n_exact_duplicates"] == 2
    assert validate_file(str(path), "csv")["n_exact_duplicates"] == 3  # without the rating column: 4 equal rows
    pq_path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"user_id": ["a", "b", "a", "a"], "item_id": ["x", "x", "x", "x"],
                             "timestamp": [1.0, 1.0, 1.0, 2.0]}), pq_path)
    assert validate_file(str(pq_path), "parquet")["n_exact_duplicates"] == 1
    assert ParquetLoader(pq_path).load().events.num_rows == 4  # the loader keeps them


def test_no_duplicates_no_warning_and_a_zero_count(tmp_path):
    """The data the other tests and the demo use has none: no warning (pytest turns
    warnings into errors), ``n_exact_duplicates`` 0, ordinal timestamps never collide."""
    from recsys.data.synthetic_source import SyntheticLoader

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        syn = P.prepare(SyntheticLoader(n_users=200, n_items=100, n_requests=50), None, "syn")
        seq = P.prepare(SeqTxtLoader(_write(tmp_path, "s.txt", b"1 2 2 2\n3 2 2\n")), None, "s")
    assert syn.meta["n_exact_duplicates"] == 0 and seq.meta["n_exact_duplicates"] == 0
    assert seq.interactions.num_rows == 5


def test_duplicate_search_scales_with_distinct_timestamps():
    """A million events with distinct (user, time) pairs: one numpy pass, no grouping."""
    import time

    from recsys.data.formats._common import exact_duplicate_rows

    n = 1_000_000
    rng = np.random.default_rng(0)
    t = pa.table({"user_idx": np.sort(rng.integers(1, 10_000, n)).astype(np.int32),
                  "item_idx": rng.integers(1, 5000, n).astype(np.int32),
                  "timestamp": np.arange(n, dtype=np.float64)})
    t0 = time.perf_counter()
    assert len(exact_duplicate_rows(t, ("user_idx", "timestamp"), presorted=True)) == 0
    assert time.perf_counter() - t0 < 2.0
    t2 = pa.concat_tables([t.slice(0, 10), t.slice(5, 3)])
    assert exact_duplicate_rows(t2, ("user_idx", "timestamp")).tolist() == [10, 11, 12]


def test_two_writers_of_the_same_cache_folder_keep_the_first(tmp_path):
    """The prepared-data cache is content-addressed: a second writer of the same
    fingerprint must not swap the folder out from under a reader."""
    from recsys.data.prepare import load_prepared, save_prepared
    from tests.helpers import prepared

    data = prepared([("u1", "i1", 1.0), ("u1", "i2", 2.0), ("u2", "i1", 3.0)])
    target = tmp_path / "cache" / "t-0123"
    save_prepared(data, target)
    inode = (target / "interactions.parquet").stat().st_ino
    save_prepared(data, target)  # a concurrent writer finishing second
    assert (target / "interactions.parquet").stat().st_ino == inode
    assert load_prepared(target).interactions.num_rows == 3
    assert sorted(p.name for p in target.parent.iterdir()) == ["t-0123"]
    (target / "meta.json").unlink()  # a broken leftover is not a cache: replaced
    save_prepared(data, target)
    assert (target / "meta.json").is_file()
