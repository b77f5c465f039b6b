"""Logged bandit feedback: the file format, its loader and validation.

Format: one row per shown (request, position), in a Parquet file or a CSV file
with a header. Columns (the source names are configurable, ``columns:`` maps
each canonical name to the file's column; defaults in :data:`DEFAULT_COLUMNS`):

=================  ========================================================  ========
canonical          meaning                                                   required
=================  ========================================================  ========
request_id         groups the rows of one slate (int or string)              yes
user_id            the user / context id (string or int)                     yes
timestamp          request time (number)                                     no
position           0-based slot in the slate, ``0 <= position < K``          yes
item_id            the action (item) shown there                             yes
reward             click / purchase: 0 or 1 (``binary_reward: false``: any   yes
                   finite number)
propensity         logging probability of that item at that position,        yes
                   ``0 < p <= 1``
logging_policy     id of the logging policy (string)                         no
=================  ========================================================  ========

Every request must show positions ``0..K-1`` exactly once (``K`` is the largest
position + 1 unless ``slate_size`` is given). Context features (e.g. the user's
segment) and per-action features (e.g. the item category) are optional extra
columns, read with ``context_columns`` / ``action_columns``.

Bad input raises :class:`~recsys.utils.errors.DataError` with one line naming the
file, the line (CSV, 1-based, header = line 1) or row (Parquet, 0-based), the
column and what was expected. :func:`synthetic_bandit_log` gives the synthetic
world's impressions in this format; the true click probabilities stay in the
world (``world.click_probability``, ``world.policy_value``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recsys.utils.errors import DataError

DEFAULT_COLUMNS = {
    "request_id": "request_id", "user_id": "user_id", "timestamp": "timestamp", "position": "position",
    "item_id": "item_id", "reward": "click", "propensity": "propensity", "logging_policy": "logging_policy",
}
REQUIRED = ("request_id", "user_id", "position", "item_id", "reward", "propensity")


@dataclass
class BanditLog:
    """A validated log as ``(R, K)`` arrays, requests in file order of first appearance.

    ``users`` / ``actions`` are indices into ``user_ids`` / ``item_ids`` (index 0 is
    padding: ``user_ids[0] == item_ids[0] == ""``), so ``actions`` are columns of a
    ``(.., n_items + 1)`` policy distribution.
    """

    users: np.ndarray  # (R,) int64
    actions: np.ndarray  # (R, K) int64
    rewards: np.ndarray  # (R, K) float64
    propensities: np.ndarray  # (R, K) float64
    timestamps: np.ndarray  # (R,) float64 (NaN when absent)
    user_ids: np.ndarray  # (n_users + 1,) str
    item_ids: np.ndarray  # (n_items + 1,) str
    logging_policies: list[str] = field(default_factory=list)
    context: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (R,) values
    action_features: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (n_items + 1,)
    source: str = "<data>"

    @property
    def n_requests(self) -> int:
        return self.actions.shape[0]

    @property
    def slate_size(self) -> int:
        return self.actions.shape[1]

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def n_users(self) -> int:
        return len(self.user_ids) - 1


def _where(path: str, row: int, csv: bool) -> tuple[int | None, str]:
    return (row + 2, "") if csv else (None, f"row {row}: ")


def _fail(path: str, row: int, csv: bool, column: str, message: str) -> DataError:
    line, prefix = _where(path, row, csv)
    return DataError(path, prefix + message, line=line, column=column)


def _first_known(mask: np.ndarray) -> int:
    """The first True of a mask known to have one."""
    return int(np.flatnonzero(mask)[0])


def _first(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if len(idx) else None


def _numeric(table: pa.Table, src: str, path: str, csv: bool) -> np.ndarray:
    col = table.column(src)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        try:
            col = pc.cast(col, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            for i, v in enumerate(col.to_pylist()):  # error path only: find the offending row
                try:
                    float(v) if v is not None else None
                except ValueError:
                    raise _fail(path, i, csv, src, f"expected a number, got {v!r}") from None
            raise
    elif not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)
              or pa.types.is_null(col.type)):
        raise DataError(path, f"expected a numeric column, got {col.type}", column=src)
    col = pc.cast(col, pa.float64())
    return np.asarray(pc.fill_null(col, float("nan")).to_numpy(), dtype=np.float64)


def _strings(table: pa.Table, src: str, path: str, csv: bool) -> np.ndarray:
    col = table.column(src)
    if col.null_count:
        row = _first_known(np.asarray(col.is_null().to_numpy(zero_copy_only=False)))
        raise _fail(path, row, csv, src, "missing value")
    if not (pa.types.is_integer(col.type) or pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise DataError(path, f"expected ids (integers or strings), got {col.type}", column=src)
    out = np.asarray(pc.cast(col, pa.string()).to_pylist(), dtype=object)
    empty = _first(out == "")
    if empty is not None:
        raise _fail(path, empty, csv, src, "missing value (empty id)")
    return out


def _index(ids: np.ndarray, known: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Ids -> indices ``1..``; ``known`` (index order, [0] = padding) first, new ids appended sorted."""
    base = np.asarray(known, dtype=object)[1:] if known is not None else np.array([], dtype=object)
    found = pc.index_in(pa.array(ids, pa.string()), value_set=pa.array(base, pa.string()))
    idx = np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), dtype=np.int64) + 1
    new_rows = idx == 0
    new = np.unique(ids[new_rows]) if new_rows.any() else np.array([], dtype=object)
    idx[new_rows] = np.searchsorted(new, ids[new_rows]) + len(base) + 1
    return idx, np.concatenate([np.array([""], dtype=object), base, new])


def read_table(path: str | Path) -> tuple[pa.Table, bool]:
    """Read a ``.parquet`` or ``.csv`` file: ``(table, is_csv)``; unreadable/empty -> DataError."""
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "file not found" if not p.exists() else "is not a regular file")
    csv = p.suffix.lower() != ".parquet"
    try:
        table = pacsv.read_csv(p) if csv else pq.read_table(p)
    except (pa.ArrowInvalid, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if csv and "Empty CSV file" in msg:
            raise DataError(p, "empty file (expected a header and at least one row)") from None
        raise DataError(p, f"not a readable {'CSV' if csv else 'Parquet'} file ({msg})") from None
    if table.num_rows == 0:
        raise DataError(p, "empty file: no rows")
    return table, csv


def from_table(table: pa.Table, source: str = "<data>", *, csv: bool = False,
               columns: Mapping[str, str | None] | None = None, slate_size: int | None = None,
               binary_reward: bool = True, known_users: np.ndarray | None = None,
               known_items: np.ndarray | None = None, context_columns: tuple[str, ...] = (),
               action_columns: tuple[str, ...] = ()) -> BanditLog:
    """Validate a table in the documented format and build a :class:`BanditLog`.

    ``known_users`` / ``known_items`` (``(n + 1,)`` id strings in index order, [0]
    padding, e.g. a prepared dataset's ids) fix the index of those ids; ids not in
    them get the next indices.
    """
    path = source
    given = dict(columns or {})
    unknown = sorted(set(given) - set(DEFAULT_COLUMNS))
    if unknown:
        raise DataError(path, f"unknown canonical column(s) {unknown} in `columns` (valid: {sorted(DEFAULT_COLUMNS)})")
    mapping = {k: v for k, v in {**DEFAULT_COLUMNS, **given}.items() if v}
    found = table.column_names
    for canon in REQUIRED:
        if canon not in mapping or mapping[canon] not in found:
            src = mapping.get(canon, canon)
            raise DataError(path, f"column not found (needed for '{canon}'); columns found: {', '.join(found)}",
                            column=src)
    for extra in (*context_columns, *action_columns):
        if extra not in found:
            raise DataError(path, f"column not found (listed in context/action columns); columns found: "
                            f"{', '.join(found)}", column=extra)
    req = _strings(table, mapping["request_id"], path, csv)
    users = _strings(table, mapping["user_id"], path, csv)
    items = _strings(table, mapping["item_id"], path, csv)
    pos = _numeric(table, mapping["position"], path, csv)
    src = mapping["position"]
    bad = _first(np.isnan(pos) | (pos != np.round(pos)) | (pos < 0))
    if bad is not None:
        raise _fail(path, bad, csv, src, f"position must be an integer >= 0, got {pos[bad]}")
    pos = pos.astype(np.int64)
    k = int(pos.max()) + 1 if slate_size is None else int(slate_size)
    bad = _first(pos >= k)
    if bad is not None:
        raise _fail(path, bad, csv, src, f"position {pos[bad]} out of range 0..{k - 1} (slate_size {k})")
    prop = _numeric(table, mapping["propensity"], path, csv)
    src = mapping["propensity"]
    for mask, what in ((np.isnan(prop), "propensity missing"),
                       (prop <= 0, "propensity must be > 0"), (prop > 1, "propensity must be <= 1")):
        bad = _first(mask)
        if bad is not None:
            raise _fail(path, bad, csv, src, f"{what}, got {prop[bad]}")
    reward = _numeric(table, mapping["reward"], path, csv)
    src = mapping["reward"]
    bad = _first(~np.isfinite(reward))
    if bad is not None:
        raise _fail(path, bad, csv, src, f"reward missing or not finite, got {reward[bad]}")
    bad = _first((reward != 0) & (reward != 1)) if binary_reward else None
    if bad is not None:
        raise _fail(path, bad, csv, src, f"reward must be 0 or 1 (binary_reward), got {reward[bad]}")
    ts = (_numeric(table, mapping["timestamp"], path, csv) if "timestamp" in mapping and mapping["timestamp"] in found
          else np.full(len(pos), np.nan))

    # slates: request -> row index, positions 0..K-1 exactly once
    req_idx, req_vocab = _index(req, None)
    first_seen = np.full(len(req_vocab), len(req), dtype=np.int64)
    np.minimum.at(first_seen, req_idx, np.arange(len(req)))
    order_of = np.argsort(np.argsort(first_seen[1:], kind="stable"), kind="stable")  # request -> slate row
    row = order_of[req_idx - 1]
    r = len(req_vocab) - 1
    slot = row * k + pos
    counts = np.bincount(slot, minlength=r * k)
    _, first_row = np.unique(slot, return_index=True)
    seen_first = np.zeros(r * k, dtype=np.int64)
    seen_first[slot[first_row]] = first_row
    dup = _first(seen_first[slot] != np.arange(len(slot)))
    if dup is not None:
        raise _fail(path, dup, csv, mapping["position"],
                    f"request {req[dup]!r} shows position {pos[dup]} more than once")
    missing = np.flatnonzero(counts == 0)
    if len(missing):
        bad_req = int(missing[0] // k)
        example = _first_known(row == bad_req)
        raise _fail(path, example, csv, mapping["position"],
                    f"request {req[example]!r} lacks position {missing[0] % k}; every request needs "
                    f"positions 0..{k - 1} exactly once")
    u_idx, user_vocab = _index(users, known_users)
    i_idx, item_vocab = _index(items, known_items)
    slate_users = np.zeros(r, dtype=np.int64)
    slate_users[row] = u_idx
    bad = _first(slate_users[row] != u_idx)
    if bad is not None:
        raise _fail(path, bad, csv, mapping["user_id"], f"request {req[bad]!r} has more than one user")

    def grid(values: np.ndarray, dtype: Any) -> np.ndarray:
        out = np.zeros(r * k, dtype=dtype)
        out[slot] = values
        return out.reshape(r, k)

    slate_ts = np.full(r, np.nan)
    slate_ts[row] = ts
    policies = []
    if "logging_policy" in mapping and mapping["logging_policy"] in found:
        policies = sorted(set(pc.cast(table.column(mapping["logging_policy"]), pa.string()).to_pylist()) - {None})
    context = {}
    for name in context_columns:
        vals = np.asarray(pc.cast(table.column(name), pa.string()).to_pylist(), dtype=object)
        ctx = np.empty(r, dtype=object)
        ctx[row] = vals
        context[name] = ctx
    action_features = {}
    for name in action_columns:
        vals = np.asarray(pc.cast(table.column(name), pa.string()).to_pylist(), dtype=object)
        feat = np.full(len(item_vocab), "", dtype=object)
        feat[i_idx] = vals
        action_features[name] = feat
    return BanditLog(slate_users, grid(i_idx, np.int64), grid(reward, np.float64), grid(prop, np.float64),
                     slate_ts, user_vocab, item_vocab, policies, context, action_features, source)


def read_bandit_log(path: str | Path, **options: Any) -> BanditLog:
    """Read and validate a log file (``.parquet``; anything else is read as CSV).
    ``options`` are those of :func:`from_table`."""
    table, csv = read_table(path)
    return from_table(table, str(path), csv=csv, **options)


def synthetic_log_table(world: Any) -> pa.Table:
    """The synthetic world's impressions in the documented format (reward column ``click``)
    plus the item ``category`` as a per-action feature."""
    imp = world.impressions
    cat = world.items.column("category").take(pc.subtract(pc.cast(imp.column("item_id"), pa.int64()), 1))
    return imp.append_column("category", cat)


def synthetic_bandit_log(world: Any) -> BanditLog:
    """:func:`synthetic_log_table` as a :class:`BanditLog` whose indices are the world's
    raw ids (user ``u`` -> index ``u``, item ``j`` -> column ``j``), so world truth
    arrays, ``logging_distribution`` and ``policy_value`` line up with it."""
    n_u, n_i = world.config.n_users, world.config.n_items
    known_users = np.array(["", *map(str, range(1, n_u + 1))], dtype=object)
    known_items = np.array(["", *map(str, range(1, n_i + 1))], dtype=object)
    return from_table(synthetic_log_table(world), "synthetic_world.impressions", slate_size=world.config.slate_size,
                      known_users=known_users, known_items=known_items, action_columns=("category",))


def resample_impressions(world: Any, n_requests: int, seed: int) -> Any:
    """A fresh impression log from the same world and logger (new requests, slates and
    clicks drawn with ``seed``); returns a world copy whose ``impressions`` are the new log."""
    import dataclasses

    from recsys.data.synthetic_logs import build_impressions

    cfg = dataclasses.replace(world.config, n_requests=n_requests)
    ev = world.events
    u = pc.cast(ev.column("user_id"), pa.int64()).to_numpy()
    t = ev.column("timestamp").to_numpy()
    first = np.full(cfg.n_users + 1, np.inf)
    last = np.full(cfg.n_users + 1, -np.inf)
    np.minimum.at(first, u, t)
    np.maximum.at(last, u, t)
    first[~np.isfinite(first)] = cfg.start_time
    last[~np.isfinite(last)] = first[~np.isfinite(last)]
    imp = build_impressions(cfg, world.truth, first, last, np.random.default_rng([seed, 7]))
    return dataclasses.replace(world, config=cfg, impressions=imp)
