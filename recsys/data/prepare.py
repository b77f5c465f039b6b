"""Map raw ids to contiguous indices and cache the result as Parquet.

The cache directory is keyed by a fingerprint: the sha256 of the input files'
bytes and of every parameter that changes the prepared data. The fingerprint is
recorded in every downstream ``summary.json`` (lineage).

Layout of a prepared dataset (written atomically, as one directory)::

    <cache_dir>/<name>-<fingerprint[:16]>/
      interactions.parquet   user_idx, item_idx, timestamp, event_type, value, ...
                             sorted by user_idx, then time, then file order
      users.parquet          user_idx, user_id, <user side features>
      items.parquet          item_idx, item_id, <item side features>
      meta.json              fingerprint, sources (path, sha256), counts, config
      extras/                loader-specific (the synthetic world's logs and truth)

Exact duplicate events (rows equal in every column, e.g. a log exported twice) are
counted after filtering (``meta["n_exact_duplicates"]``) and, by default, kept as
separate interactions (the data is what it is; results on existing data sets do
not change) with one :class:`DuplicateEventsWarning` per :func:`prepare` call;
``prepare(..., drop_duplicates=True)`` keeps only the first of each.
"""
from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys import schema as S
from recsys.data.base import LoadedData, Loader
from recsys.data.formats._common import exact_duplicate_rows
from recsys.utils.errors import DataError
from recsys.utils.io import atomic_dir, sha256_file, sha256_json

PREPARE_VERSION = 1


class DuplicateEventsWarning(UserWarning):
    """The prepared data holds exact duplicate events (kept, each counted)."""


@dataclass
class PreparedData:
    """Interactions with contiguous ids (0 = padding), side tables and lineage."""

    name: str
    interactions: pa.Table
    users: pa.Table
    items: pa.Table
    meta: dict[str, Any]
    directory: Path | None = None
    #: loader extras (tables / objects with ``.save(dir)``); after a cache hit
    #: they are on disk under :attr:`extras_dir` instead.
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def extras_dir(self) -> Path | None:
        return self.directory / "extras" if self.directory is not None else None

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def n_users(self) -> int:
        return self.users.num_rows

    @property
    def n_items(self) -> int:
        return self.items.num_rows

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(user_idx, item_idx, timestamp)`` as numpy, sorted by user then time."""
        return interaction_arrays(self.interactions)

    def raw_item_ids(self) -> np.ndarray:
        """The raw item id of every item index, ``(n_items + 1,)`` str, ``""`` at 0 (padding)."""
        idx = self.items.column(S.ITEM_IDX).to_numpy().astype(np.int64)
        out = np.full(self.n_items + 1, "", dtype=object)
        out[idx] = [str(v) for v in self.items.column(S.ITEM_ID).to_pylist()]
        return out.astype(str)

    def item_codes(self, column: str) -> np.ndarray | None:
        """Integer codes of a categorical item column, ``(n_items + 1,)``, 0 for padding."""
        if column not in self.items.column_names:
            return None
        codes = pc.dictionary_encode(self.items.column(column)).combine_chunks().indices
        return np.concatenate([[0], codes.to_numpy(zero_copy_only=False).astype(np.int64) + 1])


def interaction_arrays(t: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(user_idx, item_idx, timestamp)`` columns of a prepared interaction table."""
    return (
        t.column(S.USER_IDX).to_numpy().astype(np.int64),
        t.column(S.ITEM_IDX).to_numpy().astype(np.int64),
        t.column(S.TIMESTAMP).to_numpy(),
    )


def fingerprint(loader: Loader, filters: dict[str, Any]) -> tuple[str, list[dict[str, str]]]:
    files = loader.source_files()
    for p in files:
        if not Path(p).is_file():
            raise DataError(p, "file not found" if not Path(p).exists() else "is not a regular file")
    sources = [{"path": str(p), "sha256": sha256_file(p)} for p in files]
    key = {
        "version": PREPARE_VERSION,
        "loader": type(loader).__module__ + "." + type(loader).__qualname__,
        "config": loader.fingerprint_config(),
        "sources": [s["sha256"] for s in sources],
        "filters": filters,
    }
    return sha256_json(key), sources


def prepare(
    loader: Loader,
    cache_dir: str | Path | None,
    name: str,
    event_types: Sequence[str] | None = None,
    min_value: float | None = None,
    drop_duplicates: bool = False,
) -> PreparedData:
    """Load, filter, map ids and cache; reuse the cache when the fingerprint matches.

    Args:
        loader: any :class:`recsys.data.base.Loader`.
        cache_dir: where prepared datasets live; ``None`` disables caching.
        name: dataset name (prefix of the cache folder).
        event_types: keep only these event types (``None``: all).
        min_value: keep only events with ``value >= min_value`` (e.g. ratings >= 4).
        drop_duplicates: drop exact duplicate events (rows equal in every column),
            keeping the first; by default they are kept and a
            :class:`DuplicateEventsWarning` gives their count.
    """
    filters = {"event_types": sorted(event_types) if event_types else None, "min_value": min_value}
    if drop_duplicates:  # only then: existing fingerprints (and caches) stay valid
        filters["drop_duplicates"] = True
    fp, sources = fingerprint(loader, filters)
    target = Path(cache_dir) / f"{name}-{fp[:16]}" if cache_dir else None
    if target is not None and (target / "meta.json").is_file():
        data = load_prepared(target)
    else:
        loaded = loader.load()
        data = build(loaded, name, filters)
        data.meta.update(fingerprint=fp, sources=sources, loader=loader.fingerprint_config())
        if target is not None:
            save_prepared(data, target)
            data.directory = target
    n_dup = int(data.meta.get("n_exact_duplicates") or 0)
    if n_dup and not drop_duplicates:
        warnings.warn(DuplicateEventsWarning(
            f"dataset '{name}': {n_dup} of {data.interactions.num_rows} events are exact duplicates of an "
            f"earlier event (every column equal); kept, each counted as an interaction "
            f"(prepare(drop_duplicates=True) keeps only the first)"), stacklevel=2)
    return data


def build(loaded: LoadedData, name: str, filters: dict[str, Any]) -> PreparedData:
    """Filter events, map ids to ``1..n`` and sort; side tables follow the maps."""
    events = _filter(loaded.events, filters)
    if events.num_rows == 0:
        raise DataError(None, f"dataset '{name}' has no interactions left after filtering {filters}")
    user_ids = _sorted_unique(events.column(S.USER_ID))
    item_ids = _sorted_unique(events.column(S.ITEM_ID))
    u = pc.add(pc.index_in(events.column(S.USER_ID), value_set=user_ids), 1).cast(pa.int32())
    i = pc.add(pc.index_in(events.column(S.ITEM_ID), value_set=item_ids), 1).cast(pa.int32())
    rest = [c for c in S.EVENT_SCHEMA.names if c not in (S.USER_ID, S.ITEM_ID)]
    table = pa.table({S.USER_IDX: u, S.ITEM_IDX: i, **{c: events.column(c) for c in rest}})
    table = table.append_column("_row", pa.array(np.arange(table.num_rows)))
    order = pc.sort_indices(table, [(S.USER_IDX, "ascending"), (S.TIMESTAMP, "ascending"), ("_row", "ascending")])
    table = table.take(order).drop_columns(["_row"])
    dups = exact_duplicate_rows(table, (S.USER_IDX, S.TIMESTAMP), presorted=True)
    if len(dups) and filters.get("drop_duplicates"):
        keep = np.ones(table.num_rows, dtype=bool)
        keep[dups] = False
        table = table.filter(pa.array(keep))
    users = _side_table(user_ids, S.USER_IDX, S.USER_ID, loaded.users)
    items = _side_table(item_ids, S.ITEM_IDX, S.ITEM_ID, loaded.items)
    meta = {
        "name": name,
        "prepare_version": PREPARE_VERSION,
        "timestamp_kind": loaded.timestamp_kind,
        "n_users": users.num_rows,
        "n_items": items.num_rows,
        "n_interactions": table.num_rows,
        "n_exact_duplicates": int(len(dups)),
        "filters": filters,
    }
    return PreparedData(name, table, users, items, meta, extras=dict(loaded.extras))


def _filter(events: pa.Table, filters: dict[str, Any]) -> pa.Table:
    if filters.get("event_types"):
        events = events.filter(pc.is_in(events.column(S.EVENT_TYPE), pa.array(filters["event_types"])))
    if filters.get("min_value") is not None:
        events = events.filter(pc.greater_equal(events.column(S.VALUE), filters["min_value"]))
    return events


def _sorted_unique(col: pa.ChunkedArray) -> pa.Array:
    """Unique raw ids, numerically sorted when all are integers, else lexically."""
    uniq = pc.unique(col.combine_chunks())
    try:
        keys = pc.cast(uniq, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        keys = uniq
    return uniq.take(pc.sort_indices(keys))


def _side_table(ids: pa.Array, idx_name: str, id_name: str, side: pa.Table | None) -> pa.Table:
    base = pa.table({idx_name: pa.array(np.arange(1, len(ids) + 1, dtype=np.int32)), id_name: ids})
    if side is None or side.num_rows == 0:
        return base
    side = side.rename_columns([id_name, *side.column_names[1:]])
    side = side.set_column(0, id_name, pc.cast(side.column(0), pa.string()))
    pos = pc.index_in(ids, value_set=side.column(id_name).combine_chunks())
    for name in side.column_names[1:]:
        base = base.append_column(name, side.column(name).combine_chunks().take(pos))
    return base


def save_prepared(data: PreparedData, target: Path) -> None:
    """Write the cache folder atomically. The folder is content-addressed: when another
    process finished the same folder first, that one is kept (readers never see it
    disappear); a leftover folder without ``meta.json`` is not a cache and is replaced."""
    if target.is_dir() and not (target / "meta.json").is_file():
        shutil.rmtree(target)
    with atomic_dir(target, replace=False) as tmp:
        pq.write_table(data.interactions, tmp / "interactions.parquet")
        pq.write_table(data.users, tmp / "users.parquet")
        pq.write_table(data.items, tmp / "items.parquet")
        for key, obj in data.extras.items():  # tables as Parquet, objects through .save()
            (tmp / "extras").mkdir(exist_ok=True)
            if isinstance(obj, pa.Table):
                pq.write_table(obj, tmp / "extras" / f"{key}.parquet")
            elif hasattr(obj, "save"):
                obj.save(tmp / "extras" / key)
        (tmp / "meta.json").write_text(json.dumps(data.meta, indent=2, sort_keys=True) + "\n")


def load_prepared(directory: str | Path) -> PreparedData:
    directory = Path(directory)
    meta_path = directory / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        tables = {n: pq.read_table(directory / f"{n}.parquet") for n in ("interactions", "users", "items")}
    except FileNotFoundError as e:
        raise DataError(e.filename, "prepared dataset is incomplete (file missing); delete the cache folder") from e
    except (pa.ArrowInvalid, json.JSONDecodeError) as e:
        raise DataError(directory, f"prepared dataset is corrupt ({e}); delete the cache folder") from e
    return PreparedData(meta["name"], tables["interactions"], tables["users"], tables["items"], meta, directory)


def item_categories(data: Any) -> list[str | None] | None:
    """A category string per item: the ``category`` column, else the first genre of a list column."""
    items = data.items
    for name in ("category", "class", "genre", "genres"):
        if name in items.column_names:
            vals = items.column(name).to_pylist()
            return [(v[0] if v else None) if isinstance(v, list) else (None if v is None else str(v)) for v in vals]
    return None
