"""Embedded in-process state for online features: a key index and numpy columns
per entity, growable, with snapshot to / restore from Parquet (one file per
entity plus ``sessions.parquet`` and ``meta.json``, written as one atomic folder).
"""
from __future__ import annotations

import json
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.utils.errors import DataError
from recsys.utils.io import atomic_dir

KEY_SEP = "\x1f"  # joins composite keys (user, item) into one string in the index


class Table:
    """Rows addressed by a key (str or tuple of str); columns are numpy arrays
    whose first axis grows by doubling. ``fill`` gives each column's empty value."""

    def __init__(self, key_names: tuple[str, ...], columns: dict[str, tuple[tuple[int, ...], Any, Any]],
                 capacity: int = 1024):
        self.key_names = key_names
        self.index: dict[Any, int] = {}
        self.keys: list[Any] = []
        self.spec = columns  # name -> (trailing shape, dtype, fill)
        self.cols = {n: np.full((capacity, *shape), fill, dtype=dt) for n, (shape, dt, fill) in columns.items()}
        self.free: list[int] = []

    @property
    def capacity(self) -> int:
        return next(iter(self.cols.values())).shape[0] if self.cols else 0

    def __len__(self) -> int:
        return len(self.index)

    def lookup(self, keys: list[Any], new: np.ndarray | None = None) -> np.ndarray:
        """Row of each key, adding unseen keys (one dict lookup per key; a new key
        takes a freed row or the next one). ``new`` (bool, len(keys)), when given,
        is set where the key was not in the table before this call."""
        out = np.fromiter(map(self.index.get, keys, repeat(-1, len(keys))), dtype=np.int64, count=len(keys))
        missing = np.flatnonzero(out < 0)
        if new is not None:
            new[:] = out < 0
        if len(missing) and not self.free:
            # no freed rows: the new keys take the next rows in order of first
            # appearance (what the loop below assigns), in bulk
            index, all_keys = self.index, self.keys
            get = keys.__getitem__
            miss = list(map(get, missing.tolist())) if len(missing) < len(keys) else list(keys)
            fresh = dict.fromkeys(miss)
            base = len(all_keys)
            fresh = dict(zip(fresh, range(base, base + len(fresh))))
            index.update(fresh)
            all_keys.extend(fresh)
            out[missing] = np.fromiter(map(fresh.__getitem__, miss), dtype=np.int64, count=len(miss))
            self.ensure(len(all_keys))
        elif len(missing):
            index, free, all_keys = self.index, self.free, self.keys
            for i in missing.tolist():
                k = keys[i]
                r = index.get(k, -1)
                if r < 0:
                    if free:
                        r = free.pop()
                        all_keys[r] = k
                    else:
                        r = len(all_keys)
                        all_keys.append(k)
                    index[k] = r
                out[i] = r
            self.ensure(len(all_keys))
        return out

    def find(self, keys: list[Any]) -> np.ndarray:
        """Row of each key, -1 when unknown (never adds)."""
        return np.fromiter(map(self.index.get, keys, repeat(-1, len(keys))), dtype=np.int64, count=len(keys))

    def ensure(self, n: int) -> None:
        cap = self.capacity
        if n <= cap:
            return
        new = max(n, 2 * cap)
        for name, (shape, dt, fill) in self.spec.items():
            arr = np.full((new, *shape), fill, dtype=dt)
            arr[:cap] = self.cols[name]
            self.cols[name] = arr

    def delete(self, keys: list[Any]) -> int:
        """Remove rows: values reset to their fill, the row is reused later."""
        n = 0
        for k in keys:
            r = self.index.pop(k, None)
            if r is None:
                continue
            for name, (_, _, fill) in self.spec.items():
                self.cols[name][r] = fill
            self.keys[r] = None
            self.free.append(r)
            n += 1
        return n

    # ------------------------------------------------------------ parquet

    def to_arrow(self) -> pa.Table:
        rows = np.fromiter(self.index.values(), dtype=np.int64, count=len(self.index))
        keys = list(self.index.keys())
        data: dict[str, Any] = {}
        for i, name in enumerate(self.key_names):
            data[name] = pa.array([k[i] for k in keys] if len(self.key_names) > 1 else keys, pa.string())
        for name, arr in self.cols.items():
            v = arr[rows]
            if v.ndim == 1:
                data[name] = pa.array(v)
            else:
                width = int(np.prod(v.shape[1:]))
                data[name] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), width)
        return pa.table(data)

    def load_arrow(self, table: pa.Table, label: str) -> None:
        missing = [c for c in (*self.key_names, *self.spec) if c not in table.column_names]
        if missing:
            raise DataError(label, f"state file lacks columns {missing}")
        n = table.num_rows
        key_cols = [table.column(k).to_pylist() for k in self.key_names]
        keys = key_cols[0] if len(self.key_names) == 1 else list(zip(*key_cols))
        self.index = {k: i for i, k in enumerate(keys)}
        self.keys = list(keys)
        self.free = []
        self.ensure(max(n, 1))
        for name, (shape, dt, _) in self.spec.items():
            col = table.column(name).combine_chunks()
            if shape:
                vals = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=dt).reshape(n, *shape)
            else:
                vals = np.asarray(col.to_numpy(zero_copy_only=False), dtype=dt)
            self.cols[name][:n] = vals


def write_tables(directory: str | Path, tables: dict[str, pa.Table], meta: dict[str, Any]) -> None:
    """All state files into ``directory`` at once (temp folder + rename)."""
    with atomic_dir(directory) as tmp:
        for name, t in tables.items():
            pq.write_table(t, tmp / f"{name}.parquet", compression="lz4")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")


def read_tables(directory: str | Path) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    d = Path(directory)
    if not (d / "meta.json").is_file():
        raise DataError(d, "not an online feature state folder (no meta.json)")
    meta = json.loads((d / "meta.json").read_text())
    tables = {}
    for p in sorted(d.glob("*.parquet")):
        try:
            tables[p.stem] = pq.read_table(p)
        except Exception as e:
            raise DataError(p, f"unreadable state file ({type(e).__name__})") from None
    return tables, meta


def read_parquet_frame(path: str | Path, allow_empty: bool = False) -> Any:
    """A Parquet file as a polars DataFrame, or a one-line :class:`DataError`
    naming the file (missing, unreadable, or empty unless ``allow_empty``)."""
    import polars as pl

    p = Path(path)
    if not p.is_file():
        raise DataError(p, "no such file")
    try:
        df = pl.read_parquet(p)
    except Exception as e:  # polars raises its own exception types
        raise DataError(p, f"not a readable Parquet file ({type(e).__name__})") from None
    if df.height == 0 and not allow_empty:
        raise DataError(p, "empty file (0 rows)")
    return df
