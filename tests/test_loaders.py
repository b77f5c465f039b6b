"""Loaders per format: happy paths on tiny files, every bad input, real data sets."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.data.loaders import (
    CsvLoader,
    ParquetLoader,
    RecBoleLoader,
    SeqTxtLoader,
    validate_file,
)
from recsys.schema import EVENT_SCHEMA
from recsys.utils.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("RECSYS_DATA_ROOT", REPO_ROOT.parent / "shared" / "datasets"))

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def expect(load, path: Path, *phrases: str, line: int | None = None, column: str | None = None) -> DataError:
    """Run ``load``; check the DataError names the file, line, column and phrases."""
    with pytest.raises(DataError) as info:
        load()
    err, msg = info.value, str(info.value)
    assert "\n" not in msg
    assert msg.startswith(str(path)), msg
    assert path.name in msg
    for phrase in phrases:
        assert phrase in msg, msg
    if line is not None:
        assert err.line == line, msg
        assert msg.startswith(f"{path}:{line}: "), msg
    if column is not None:
        assert err.column == column, msg
        assert f"column '{column}'" in msg, msg
    return err


def rows(table: pa.Table, *cols: str) -> list[tuple]:
    return list(zip(*(table.column(c).to_pylist() for c in cols)))


# ============================================================================ seqtxt


def test_seqtxt_happy(tmp_path):
    path = write(tmp_path, "s.txt", "1 10 11 12\n2 11\n30 10 12\n")
    data = SeqTxtLoader(str(path)).load()
    ev = data.events
    assert ev.schema.equals(EVENT_SCHEMA)
    assert data.timestamp_kind == "ordinal"
    assert rows(ev, "user_id", "item_id", "timestamp") == [
        ("1", "10", 0.0), ("1", "11", 1.0), ("1", "12", 2.0),
        ("2", "11", 0.0), ("30", "10", 0.0), ("30", "12", 1.0),
    ]
    assert set(ev.column("event_type").to_pylist()) == {"click"}
    assert ev.column("value").null_count == ev.num_rows
    assert data.items is None and data.users is None


def test_seqtxt_event_type_crlf_and_tabs(tmp_path):
    path = write(tmp_path, "s.txt", "1\t10 11\r\n2 12\r\n")
    ev = SeqTxtLoader(path, event_type="purchase").load().events
    assert rows(ev, "user_id", "item_id", "event_type") == [
        ("1", "10", "purchase"), ("1", "11", "purchase"), ("2", "12", "purchase")]


def test_seqtxt_loader_protocol(tmp_path):
    path = write(tmp_path, "s.txt", "1 2\n")
    loader = SeqTxtLoader(str(path), event_type="view")
    assert loader.source_files() == [path]
    assert loader.fingerprint_config() == {"format": "seqtxt", "event_type": "view"}


@pytest.mark.parametrize(
    "text, line, column, phrases",
    [
        ("1 2 3\n2 x7 4\n", 2, "item_id", ("expected an integer id", "'x7'")),
        ("1 2 3\nu2 4\n", 2, "user_id", ("expected an integer id", "'u2'")),
        ("1 2 -3\n", 1, "item_id", ("expected an integer id", "'-3'")),
        ("1 2 3\n2\n", 2, "item_id", ("user '2' has no items",)),
        ("1 2 3\n2 4\n1 5\n", 3, "user_id", ("duplicate user '1'", "first at line 1")),
        ("1 2 3\n\n2 4\n", 2, None, ("blank line",)),
        ("1 2 3\n2 4", 2, None, ("truncated last line 2 (no trailing newline)",)),
        ("1 2\n2 \xe9\n".encode("latin-1"), 2, None, ("invalid UTF-8",)),
    ],
)
def test_seqtxt_bad_lines(tmp_path, text, line, column, phrases):
    path = write(tmp_path, "bad.txt", text)
    expect(SeqTxtLoader(path).load, path, *phrases, line=line, column=column)


@pytest.mark.parametrize("text, phrase", [(b"", "empty file (0 bytes)"), (b"\n \n", "no data rows")])
def test_seqtxt_empty(tmp_path, text, phrase):
    path = write(tmp_path, "e.txt", text)
    expect(SeqTxtLoader(path).load, path, phrase)


def test_missing_file_and_directory(tmp_path):
    missing = tmp_path / "nope.txt"
    expect(SeqTxtLoader(missing).load, missing, "file not found")
    expect(CsvLoader(missing, {}).load, missing, "file not found")
    expect(RecBoleLoader(missing).load, missing, "file not found")
    expect(ParquetLoader(missing).load, missing, "file not found")
    folder = tmp_path / "dir.txt"
    folder.mkdir()
    expect(SeqTxtLoader(folder).load, folder, "is a directory, expected a file")
    expect(CsvLoader(folder).load, folder, "is a directory, expected a file")


def test_unknown_event_type(tmp_path):
    path = write(tmp_path, "s.txt", "1 2\n")
    expect(SeqTxtLoader(path, event_type="buy").load, path, "unknown event_type 'buy'", "purchase",
           column="event_type")


# =========================================================================== recbole


def _ml_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    inter = write(tmp_path, "m.inter", INTER + "1\t10\t4\t100\n2\t10\t3.5\t50\n1\t11\t5\t200\n")
    item = write(
        tmp_path, "m.item",
        "item_id:token\ttitle:token_seq\tyear:token\tprice:float\temb:float_seq\n"
        "10\tToy Story\t1995\t9.5\t0.1 0.2\n11\tHeat\t1995\t\t\n",
    )
    user = write(tmp_path, "m.user", "user_id:token\tage:float\tgender:token\n1\t24\tM\n2\t53\tF\n")
    return inter, item, user


def test_recbole_happy_with_side_tables(tmp_path):
    inter, item, user = _ml_files(tmp_path)
    data = RecBoleLoader(str(inter), str(item), str(user)).load()
    ev = data.events
    assert ev.schema.equals(EVENT_SCHEMA)
    assert data.timestamp_kind == "unix"
    assert rows(ev, "user_id", "item_id", "value", "timestamp", "event_type") == [
        ("1", "10", 4.0, 100.0, "rating"),
        ("2", "10", 3.5, 50.0, "rating"),
        ("1", "11", 5.0, 200.0, "rating"),
    ]
    items = data.items
    assert items.column_names == ["item_id", "title", "year", "price", "emb"]
    assert items.schema.field("item_id").type == pa.string()
    assert items.schema.field("title").type == pa.list_(pa.string())
    assert items.schema.field("year").type == pa.string()
    assert items.schema.field("price").type == pa.float64()
    assert items.schema.field("emb").type == pa.list_(pa.float64())
    assert items.column("title").to_pylist() == [["Toy", "Story"], ["Heat"]]
    assert items.column("emb").to_pylist() == [[0.1, 0.2], []]
    assert items.column("price").to_pylist() == [9.5, None]
    assert data.users.column_names == ["user_id", "age", "gender"]
    assert data.users.column("age").to_pylist() == [24.0, 53.0]
    loader = RecBoleLoader(inter, item_path=item)
    assert loader.source_files() == [inter, item]
    assert loader.fingerprint_config()["item_table"] is True
    json.dumps(loader.fingerprint_config())


def test_recbole_no_timestamp_is_ordinal_per_user(tmp_path):
    path = write(tmp_path, "o.inter", "user_id:token\titem_id:token\n1\ta\n2\tb\n1\tc\n1\td\n2\te\n")
    data = RecBoleLoader(path).load()
    assert data.timestamp_kind == "ordinal"
    assert data.events.column("timestamp").to_pylist() == [0.0, 0.0, 1.0, 2.0, 1.0]
    assert data.events.column("value").null_count == 5


def test_recbole_custom_columns(tmp_path):
    path = write(tmp_path, "c.inter", "uid:token\tiid:token\tscore:float\tts:float\tkind:token\n"
                 "u\ti\t1\t7\tclick\nv\tj\t2\t8\tpurchase\n")
    cols = {"user_id": "uid", "item_id": "iid", "value": "score", "timestamp": "ts", "event_type": "kind"}
    ev = RecBoleLoader(path, columns=cols).load().events
    assert rows(ev, "user_id", "item_id", "value", "timestamp", "event_type") == [
        ("u", "i", 1.0, 7.0, "click"), ("v", "j", 2.0, 8.0, "purchase")]


def test_recbole_columns_from_hydra_dictconfig(tmp_path):
    from omegaconf import OmegaConf

    path = write(tmp_path, "c.inter", "uid:token\titem_id:token\n1\t2\n")
    cols = OmegaConf.create({"user_id": "uid", "value": None, "timestamp": None})
    loader = RecBoleLoader(path, columns=cols)
    assert loader.load().events.column("user_id").to_pylist() == ["1"]
    assert json.loads(json.dumps(loader.fingerprint_config()))["columns"]["user_id"] == "uid"


@pytest.mark.parametrize(
    "body, line, column, phrases",
    [
        ("1\t10\t4\t100\n2\t10\tabc\t50\n", 3, "rating", ("expected a float", "'abc'")),
        ("1\t10\t4\t100\n2\t10\t3\n", 3, None, ("expected 4 fields, got 3",)),
        ("1\t10\t4\t100\n2\t10\t3\t1\t9\n", 3, None, ("expected 4 fields, got 5",)),
        ("1\t10\t4\t100\n" + INTER + "2\t10\t3\t50\n", 3, None, ("duplicate header at line 3",)),
        ("1\t10\t4\t100\n2\t10", 3, None,
         ("truncated last line 3 (no trailing newline)", "expected 4 fields, got 2")),
        ("1\t10\t4\t100\n2\t10\t3\t50", 3, None, ("truncated last line 3 (no trailing newline)",)),
        ("1\t10\t4\t100\n\n2\t10\t3\t50\n", 3, None, ("blank line",)),
        ("1\t10\t4\t100\n\t10\t3\t50\n", 3, "user_id", ("empty user id",)),
        ("1\t10\t4\t100\n2\t \t3\t50\n", 3, "item_id", ("empty item id",)),
        ("1\t10\t4\t100\n2\t10\t3\t-5\n", 3, "timestamp", ("negative timestamp -5.0",)),
        ("1\t10\t4\t100\n2\t10\t3\tnan\n", 3, "timestamp", ("non-finite timestamp nan",)),
        ("1\t10\t4\t100\n2\t10\t3\t\n", 3, "timestamp", ("missing timestamp",)),
        ("1\t10\t4\t100\n2\t10\tinf\t1\n", 3, "rating", ("non-finite value inf",)),
        (b"1\t10\t4\t100\n2\t1\xff\t3\t1\n", 3, None, ("invalid UTF-8",)),
    ],
)
def test_recbole_bad_rows(tmp_path, body, line, column, phrases):
    data = INTER.encode() + (body if isinstance(body, bytes) else body.encode())
    path = write(tmp_path, "bad.inter", data)
    expect(RecBoleLoader(path).load, path, *phrases, line=line, column=column)


@pytest.mark.parametrize(
    "header, column, phrases",
    [
        ("user_id:token\titem_id\trating:float\n", "item_id", ("has no ':type'",)),
        ("user_id:token\titem_id:token\tpic:blob\n", "pic", ("unknown type 'blob'", "token_seq")),
        ("user_id:token\titem_id:token\titem_id:float\n", "item_id", ("duplicate field name in header",)),
        ("user_id:token\titem:token\trating:float\n", "item_id",
         ("column not found", "columns found: user_id, item, rating")),
        ("user_id:float\titem_id:token\n", "user_id", ("declared as 'float', expected 'token'",)),
        ("user_id:token\titem_id:token\trating:token\n", "rating",
         ("declared as 'token', expected 'float'",)),
    ],
)
def test_recbole_bad_header(tmp_path, header, column, phrases):
    n = header.count("\t") + 1
    path = write(tmp_path, "h.inter", header + "\t".join(["1"] * n) + "\n")
    expect(RecBoleLoader(path).load, path, *phrases, line=1, column=column)


def test_recbole_header_only_and_empty(tmp_path):
    path = write(tmp_path, "h.inter", INTER)
    expect(RecBoleLoader(path).load, path, "no data rows", line=1)
    path = write(tmp_path, "e.inter", "")
    expect(RecBoleLoader(path).load, path, "empty file")


@pytest.mark.parametrize(
    "text, line, column, phrases",
    [
        ("item_id:token\tg:token_seq\n1\ta\n1\tb\n", 3, "item_id", ("duplicate id '1'", "first at line 2")),
        ("item_id:token\temb:float_seq\n1\t0.5 1\n2\t0.5 x\n", 3, "emb",
         ("space-separated floats", "'0.5 x'")),
        ("item_id:float\tg:token\n1\ta\n", 1, "item_id", ("id column declared as 'float'",)),
        ("item_id:token\tg:token\n1\ta\nitem_id:token\tg:token\n", 3, None, ("duplicate header at line 3",)),
        ("item_id:token\tg:token\n\ta\n", 2, "item_id", ("empty item id",)),
    ],
)
def test_recbole_bad_side_table(tmp_path, text, line, column, phrases):
    inter = write(tmp_path, "m.inter", "user_id:token\titem_id:token\n1\t1\n")
    item = write(tmp_path, "m.item", text)
    expect(RecBoleLoader(inter, item_path=item).load, item, *phrases, line=line, column=column)


def test_recbole_missing_side_table(tmp_path):
    inter = write(tmp_path, "m.inter", "user_id:token\titem_id:token\n1\t1\n")
    missing = tmp_path / "m.user"
    expect(RecBoleLoader(inter, user_path=missing).load, missing, "file not found")


def test_recbole_explicit_column_is_required(tmp_path):
    path = write(tmp_path, "m.inter", "user_id:token\titem_id:token\n1\t1\n")
    expect(RecBoleLoader(path, columns={"timestamp": "timestamp"}).load, path,
           "column not found", "needed for 'timestamp'", line=1, column="timestamp")


# =============================================================================== csv


def test_csv_happy_int_ids_and_ms(tmp_path):
    path = write(tmp_path, "e.csv", "uid,iid,ts,extra\n7,0012,1500,x\n8,13,2500,y\n")
    data = CsvLoader(str(path), columns={"user_id": "uid", "item_id": "iid", "timestamp": "ts"},
                     timestamp_unit="ms").load()
    assert data.events.schema.equals(EVENT_SCHEMA)
    assert data.timestamp_kind == "unix"
    assert rows(data.events, "user_id", "item_id", "timestamp", "event_type") == [
        ("7", "0012", 1.5, "click"), ("8", "13", 2.5, "click")]


def test_csv_optional_columns_quotes_and_delimiter(tmp_path):
    path = write(
        tmp_path, "e.tsv",
        'user;item;t;kind;dwell;sess;pos;p\n"a;1";i1;10;view;2.5;s1;0;0.5\nb;i2;11;purchase;;s2;3;1\n',
    )
    cols = {"user_id": "user", "item_id": "item", "timestamp": "t", "event_type": "kind", "value": "dwell",
            "session_id": "sess", "position": "pos", "propensity": "p"}
    ev = CsvLoader(path, columns=cols, delimiter=";").load().events
    assert ev.schema.equals(EVENT_SCHEMA)
    assert rows(ev, "user_id", "event_type", "value", "session_id", "position", "propensity") == [
        ("a;1", "view", 2.5, "s1", 0, 0.5), ("b", "purchase", None, "s2", 3, 1.0)]


def test_csv_iso_timestamps_and_default_columns(tmp_path):
    path = write(tmp_path, "e.csv", "user_id,item_id,timestamp\n1,2,1970-01-01T00:01:00\n1,3,1970-01-02\n")
    data = CsvLoader(path).load()
    assert data.events.column("timestamp").to_pylist() == [60.0, 86400.0]


def test_csv_without_timestamp_is_ordinal(tmp_path):
    path = write(tmp_path, "e.csv", "user_id,item_id\nu,a\nv,b\nu,c\n")
    data = CsvLoader(path, columns={"user_id": "user_id", "item_id": "item_id"}).load()
    assert data.timestamp_kind == "ordinal"
    assert data.events.column("timestamp").to_pylist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "text, line, column, phrases",
    [
        ("user_id,item_id,timestamp\n1,2,3\n1,2\n", 3, None, ("expected 3 fields, got 2",)),
        ("user_id,item_id,timestamp\n1,2,3\n1,2,x\n", 3, "timestamp",
         ("expected a numeric timestamp", "'x'")),
        ("user_id,item_id,timestamp\n1,2,3\n1,,4\n", 3, "item_id", ("empty item id",)),
        ("user_id,item_id,timestamp\n1,2,3\n,2,4\n", 3, "user_id", ("empty user id",)),
        ("user_id,item_id,timestamp\n1,2,3\n1,2,-1\n", 3, "timestamp", ("negative timestamp",)),
        ("user_id,item_id,timestamp\n1,2,3\n1,2,inf\n", 3, "timestamp", ("non-finite timestamp inf",)),
        ("user_id,item_id,timestamp\n1,2,3\nuser_id,item_id,timestamp\n1,2,4\n", 3, None,
         ("duplicate header at line 3",)),
        ("user_id,item_id,timestamp\n1,2,3\n1,2", 3, None,
         ("truncated last line 3 (no trailing newline)", "expected 3 fields, got 2")),
        ("user_id,item_id,user_id\n1,2,3\n", 1, "user_id", ("duplicate field name in header",)),
        ("user,item_id,timestamp\n1,2,3\n", 1, "user_id",
         ("column not found", "columns found: user, item_id, timestamp")),
    ],
)
def test_csv_bad(tmp_path, text, line, column, phrases):
    path = write(tmp_path, "bad.csv", text)
    expect(CsvLoader(path).load, path, *phrases, line=line, column=column)


def test_csv_crlf(tmp_path):
    path = write(tmp_path, "w.csv", "user_id,item_id,timestamp\r\n1,2,3\r\n4,5,6\r\n")
    assert rows(CsvLoader(path).load().events, "user_id", "timestamp") == [("1", 3.0), ("4", 6.0)]


def test_csv_line_break_inside_quotes(tmp_path):
    path = write(tmp_path, "q.csv", 'user_id,item_id,timestamp\n1,2,3\n1,"2\n3",3\n4,5,6\n')
    expect(CsvLoader(path).load, path, "unterminated quoted field", line=3)


def test_csv_repeated_header_with_only_string_columns(tmp_path):
    path = write(tmp_path, "cat.csv", "user_id,item_id\n1,2\nuser_id,item_id\n3,4\n")
    cols = {"user_id": "user_id", "item_id": "item_id", "timestamp": None}
    expect(CsvLoader(path, cols).load, path, "duplicate header at line 3", line=3)


@pytest.mark.parametrize(
    "header, good, bad, cols, phrases",
    [
        ("u,i,r", "1", "abc", {"value": "r"}, ("expected a float", "'abc'")),
        ("u,i,r", "1", "nan", {"value": "r"}, ("non-finite value nan",)),
        ("u,i,k", "view", "buy", {"event_type": "k"}, ("unknown event type 'buy'",)),
        ("u,i,k", "view", "", {"event_type": "k"}, ("unknown event type ''",)),
        ("u,i,p", "1", "1.5", {"propensity": "p"}, ("propensity 1.5 above 1",)),
        ("u,i,p", "1", "-0.5", {"propensity": "p"}, ("negative propensity -0.5",)),
        ("u,i,p", "1", "1.5", {"position": "p"}, ("non-integer position 1.5",)),
    ],
)
def test_csv_bad_optional_columns(tmp_path, header, good, bad, cols, phrases):
    path = write(tmp_path, "o.csv", f"{header}\n1,2,{good}\n1,3,{bad}\n")
    cols = {"user_id": "u", "item_id": "i", "timestamp": None, **cols}
    expect(CsvLoader(path, cols).load, path, *phrases, line=3, column=header[-1])


def test_csv_bad_parameters(tmp_path):
    path = write(tmp_path, "p.csv", "user_id,item_id\n1,2\n")
    expect(CsvLoader(path, {"rating": "r"}).load, path, "unknown canonical column(s) 'rating'")
    expect(CsvLoader(path, {"user_id": None}).load, path, "must map 'user_id'")
    expect(CsvLoader(path, timestamp_unit="h").load, path, "unknown timestamp_unit 'h'")
    expect(CsvLoader(tmp_path / "e.csv").load, tmp_path / "e.csv", "file not found")


def test_csv_header_only(tmp_path):
    path = write(tmp_path, "h.csv", "user_id,item_id,timestamp\n")
    expect(CsvLoader(path).load, path, "no data rows", line=1)


# =========================================================================== parquet


def _pq(path: Path, **cols) -> Path:
    pq.write_table(pa.table(cols), path)
    return path


def test_parquet_happy_types(tmp_path):
    ts = pa.array([1000, 2500], pa.timestamp("ms", tz="UTC"))
    path = _pq(
        tmp_path / "e.parquet",
        u=pa.array([1, 2], pa.int32()),
        i=pa.array(["a", "b"]).dictionary_encode(),
        t=ts,
        r=pa.array([1, 5], pa.int8()),
    )
    cols = {"user_id": "u", "item_id": "i", "timestamp": "t", "value": "r"}
    data = ParquetLoader(str(path), columns=cols).load()
    assert data.events.schema.equals(EVENT_SCHEMA)
    assert rows(data.events, "user_id", "item_id", "timestamp", "value") == [
        ("1", "a", 1.0, 1.0), ("2", "b", 2.5, 5.0)]


def test_parquet_numeric_timestamps_with_unit(tmp_path):
    path = _pq(tmp_path / "e.parquet", user_id=["x"], item_id=[3], timestamp=[2_000_000])
    ev = ParquetLoader(path, timestamp_unit="us").load().events
    assert rows(ev, "user_id", "item_id", "timestamp") == [("x", "3", 2.0)]


def test_parquet_directory_sorted(tmp_path):
    folder = tmp_path / "events"
    folder.mkdir()
    _pq(folder / "b.parquet", user_id=["u"], item_id=["late"], timestamp=[5.0])
    _pq(folder / "a.parquet", user_id=["u"], item_id=["early"], timestamp=[1.0])
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / ".hidden.parquet").write_bytes(b"junk")
    loader = ParquetLoader(folder)
    assert loader.source_files() == [folder / "a.parquet", folder / "b.parquet"]
    assert loader.load().events.column("item_id").to_pylist() == ["early", "late"]


def test_parquet_directory_second_file_must_match(tmp_path):
    folder = tmp_path / "events"
    folder.mkdir()
    _pq(folder / "a.parquet", user_id=["u"], item_id=["i"], timestamp=[1.0])
    bad = _pq(folder / "b.parquet", user_id=["u"], item_id=["i"])
    expect(ParquetLoader(folder).load, bad, "column not found", column="timestamp")


@pytest.mark.parametrize(
    "cols, column, phrases",
    [
        (dict(user_id=[1.5], item_id=["a"]), "user_id",
         ("expected an integer or string column, got double",)),
        (dict(user_id=["u"], item_id=[True]), "item_id", ("expected an integer or string column, got bool",)),
        (dict(user_id=["u", None], item_id=["a", "b"]), "user_id", ("row 1: missing user id (null)",)),
        (dict(user_id=["u", "v"], item_id=["a", ""]), "item_id", ("row 1: empty item id",)),
        (dict(user_id=["u"], item_id=["a"], timestamp=["abc"]), "timestamp",
         ("row 0: expected a numeric timestamp, got 'abc'",)),
        (dict(user_id=["u"], item_id=["a"], timestamp=[True]), "timestamp", ("expected a numeric column",)),
        (dict(user_id=["u", "v"], item_id=["a", "b"], timestamp=[1.0, -2.0]), "timestamp",
         ("row 1: negative timestamp -2.0",)),
        (dict(user_id=["u"], item_id=["a"], timestamp=[math.nan]), "timestamp",
         ("row 0: non-finite timestamp",)),
        (dict(user_id=["u"], item_id=["a"], timestamp=pa.array([None], pa.float64())), "timestamp",
         ("row 0: missing timestamp",)),
        (dict(user_id=["u"], item=["a"]), "item_id", ("column not found", "columns found: user_id, item")),
    ],
)
def test_parquet_bad(tmp_path, cols, column, phrases):
    path = _pq(tmp_path / "bad.parquet", **cols)
    expect(ParquetLoader(path).load, path, *phrases, column=column)


def test_parquet_bad_files(tmp_path):
    empty = write(tmp_path, "e.parquet", b"")
    expect(ParquetLoader(empty).load, empty, "empty file (0 bytes)")
    junk = write(tmp_path, "j.parquet", b"not parquet\n")
    expect(ParquetLoader(junk).load, junk, "not a readable parquet file")
    no_rows = tmp_path / "z.parquet"
    empty_ids = pa.array([], pa.string())
    pq.write_table(pa.table({"user_id": empty_ids, "item_id": empty_ids}), no_rows)
    expect(ParquetLoader(no_rows).load, no_rows, "no data rows")
    folder = tmp_path / "none"
    folder.mkdir()
    expect(ParquetLoader(folder).load, folder, "no .parquet files in directory")
    dup = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["u"]), pa.array(["i"]), pa.array(["x"])],
                                        names=["user_id", "item_id", "item_id"]), dup)
    expect(ParquetLoader(dup).load, dup, "duplicate field name in schema", column="item_id")


# ====================================================================== validate_file


def test_validate_file_formats(tmp_path):
    seq = write(tmp_path, "s.txt", "1 2 3\n4 2\n")
    summary = validate_file(str(seq), "seqtxt")
    assert (summary["n_rows"], summary["n_users"], summary["n_items"]) == (3, 2, 2)
    assert summary["timestamp_kind"] == "ordinal" and summary["format"] == "seqtxt"
    inter, _, _ = _ml_files(tmp_path)
    summary = validate_file(str(inter), "recbole")
    assert summary["items"]["columns"]["title"] == "list<item: string>"
    assert summary["users"]["n_rows"] == 2
    assert "value" in summary["columns"] and summary["path"] == str(inter)
    assert len(summary["source_files"]) == 3
    csv_path = write(tmp_path, "e.csv", "user_id,item_id\n1,2\n")
    assert validate_file(str(csv_path), "csv")["timestamp_kind"] == "ordinal"
    pq_path = _pq(tmp_path / "e.parquet", user_id=["u"], item_id=["i"], timestamp=[3.0])
    summary = validate_file(str(pq_path), "parquet")
    assert (summary["timestamp_min"], summary["event_types"]) == (3.0, {"click": 1})
    json.dumps(summary)


def test_validate_file_bad_format_and_option(tmp_path):
    path = write(tmp_path, "s.txt", "1 2\n")
    expect(lambda: validate_file(str(path), "xml"), path,
           "unknown format 'xml'", "csv, parquet, recbole, seqtxt")
    expect(lambda: validate_file(str(path), "seqtxt", delimiter=","), path, "bad option for format 'seqtxt'")


# ========================================================================= real data


def _real(rel: str) -> Path:
    path = DATA_ROOT / rel
    if not path.is_file():
        pytest.skip(f"real data set not found: {path} (set RECSYS_DATA_ROOT)")
    return path


@pytest.mark.data
def test_real_beauty():
    path = _real("amazon-beauty/Beauty.txt")
    start = time.perf_counter()
    data = SeqTxtLoader(path).load()
    assert time.perf_counter() - start < 2.0
    ev = data.events
    assert ev.schema.equals(EVENT_SCHEMA)
    assert ev.num_rows == 198502
    assert len(set(ev.column("user_id").to_pylist())) == 22363
    assert len(set(ev.column("item_id").to_pylist())) == 12101


@pytest.mark.data
def test_real_ml100k():
    inter = _real("ml-100k/ml-100k.inter")
    summary = validate_file(str(inter), "recbole")
    assert (summary["n_rows"], summary["n_users"], summary["n_items"]) == (100000, 943, 1682)
    data = RecBoleLoader(inter, inter.with_suffix(".item"), inter.with_suffix(".user")).load()
    assert data.timestamp_kind == "unix"
    assert data.items.num_rows == 1682 and data.users.num_rows == 943
    assert data.items.schema.field("class").type == pa.list_(pa.string())
    assert data.items.column("class")[0].as_py() == ["Animation", "Children's", "Comedy"]
    assert data.users.column_names[0] == "user_id"
