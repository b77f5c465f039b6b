"""Logged bandit feedback: the file format, its loader and validation.

Format: one row per shown (request, position), in a Parquet file or a CSV file
with a header. Columns (the source names are configurable, ``columns:`` maps
each canonical name to the file's column; defaults in :data:`DEFAULT_COLUMNS`):

=================  ========================================================  ========
canonical          meaning                                                   required
=================  ========================================================  ========
request_id         groups the rows of one slate (int or string); mapped to   yes (or
                   null: every row is its own round (one impression per      null)
                   row), the position then kept as a context
user_id            the user / context id (string or int, e.g. a hash)        yes
timestamp          request time (number)                                     no
position           slot in the slate, numbered from ``position_base``        yes (rounds
                   (0 or 1, declared; never guessed)                         by request)
item_id            the action (item) shown there                             yes
reward             click / purchase: 0 or 1 (``binary_reward: false``: any   yes
                   finite number)
propensity         logging probability of that item at that position,        yes
                   ``0 < p <= 1`` (per row)
logging_policy     id of the logging policy (string)                         no
=================  ========================================================  ========

With request ids, every request must show positions ``0..K-1`` (after
subtracting ``position_base``) exactly once (``K`` is the largest position + 1
unless ``slate_size`` is given). Context features (strings, hashes or numbers,
read as categories; a missing value is its own category ``""``) and per-action
features (constant per item) are extra columns named in ``context_columns`` /
``action_columns``; the DM/DR reward model uses them.

The options are one block (:class:`LogOptions`, ``logs_options:`` in the ``recsys
ope`` configs); an unknown option is refused in one line naming it.

Bad input raises :class:`~recsys.utils.errors.DataError` with one line naming the
file, the line (CSV, 1-based, header = line 1) or row (Parquet, 0-based), the
column and what was expected. :func:`synthetic_bandit_log` gives the synthetic
world's impressions in this format; the true click probabilities stay in the
world (``world.click_probability``, ``world.policy_value``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recsys.utils.errors import DataError, RecsysError

DEFAULT_COLUMNS = {
    "request_id": "request_id", "user_id": "user_id", "timestamp": "timestamp", "position": "position",
    "item_id": "item_id", "reward": "click", "propensity": "propensity", "logging_policy": "logging_policy",
}
REQUIRED = ("request_id", "user_id", "position", "item_id", "reward", "propensity")


@dataclass(frozen=True)
class LogOptions:
    """How to read a log file (``logs_options:`` in configs/ope.yaml); see the module docstring.

    Args:
        columns: canonical name -> source column (``None`` for ``request_id``: one round per row;
            for ``position`` in that case: no position).
        slate_size: K (None: the largest position + 1).
        binary_reward: rewards must be 0 or 1.
        position_base: the number of the first position in the file (0 or 1).
        context_columns: extra per-round context columns (categories: strings, hashes, numbers).
        action_columns: extra per-item feature columns (constant per item).
        reward_range: ``[low, high]`` bounds of one reward (None: ``[0, 1]`` when binary, else unbounded).
    """

    columns: Mapping[str, str | None] = field(default_factory=dict)
    slate_size: int | None = None
    binary_reward: bool = True
    position_base: int = 0
    context_columns: tuple[str, ...] = ()
    action_columns: tuple[str, ...] = ()
    reward_range: tuple[float, float] | None = None

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None, where: str = "logs_options") -> "LogOptions":
        """Build from a plain mapping; an unknown key or a bad value -> one-line RecsysError naming it."""
        opts = dict(options or {})
        valid = [f.name for f in fields(cls)]
        for key in opts:
            if key not in valid:
                raise RecsysError(f"unknown option {where}.{key} (valid: {', '.join(valid)})")
        cols = dict(opts.get("columns") or {})
        for key in cols:
            if key not in DEFAULT_COLUMNS:
                raise RecsysError(f"unknown column {where}.columns.{key} (canonical names: "
                                  f"{', '.join(DEFAULT_COLUMNS)})")
        base = opts.get("position_base", 0)
        if base not in (0, 1):
            raise RecsysError(f"{where}.position_base must be 0 or 1, got {base!r}")
        rr = opts.get("reward_range")
        if rr is not None:
            rr = tuple(float(x) for x in rr)
            if len(rr) != 2 or not rr[0] < rr[1]:
                raise RecsysError(f"{where}.reward_range must be [low, high] with low < high, got {list(rr)}")
        for key in ("context_columns", "action_columns"):
            v = opts.get(key) or ()
            if isinstance(v, str):
                raise RecsysError(f"{where}.{key} must be a list of column names, got the string {v!r}")
        return cls(columns=cols, slate_size=opts.get("slate_size"), binary_reward=bool(opts.get("binary_reward", True)),
                   position_base=int(base), context_columns=tuple(opts.get("context_columns") or ()),
                   action_columns=tuple(opts.get("action_columns") or ()),
                   reward_range=rr)

    def bounds(self) -> tuple[float, float] | None:
        """The reward range: declared, else ``(0, 1)`` for binary rewards, else None."""
        if self.reward_range is not None:
            return (float(self.reward_range[0]), float(self.reward_range[1]))
        return (0.0, 1.0) if self.binary_reward else None


@dataclass
class BanditLog:
    """A validated log as ``(R, K)`` arrays, rounds in file order of first appearance.

    ``users`` / ``actions`` are indices into ``user_ids`` / ``item_ids`` (index 0 is
    padding: ``user_ids[0] == item_ids[0] == ""``), so ``actions`` are columns of a
    ``(.., n_items + 1)`` policy distribution. ``contexts`` index the distinct
    contexts of the rounds (user + declared context columns + the position when
    each row is its own round; ``context_table`` holds their values, row 0 padding,
    ``context_users`` their user index); without context columns a context is the
    user (``contexts == users``). Policies and the reward model act on contexts.
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
    contexts: np.ndarray | None = None  # (R,) int64; None: the users
    context_table: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (n_contexts + 1,) str
    context_users: np.ndarray | None = None  # (n_contexts + 1,) int64 user index
    row_rounds: bool = False  # one impression per row (no request id)
    position_base: int = 0
    reward_range: tuple[float, float] | None = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.contexts is None:
            self.contexts = self.users
            self.context_users = np.arange(len(self.user_ids), dtype=np.int64)
            self.context_table = {"user_id": self.user_ids}

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

    @property
    def n_contexts(self) -> int:
        assert self.context_users is not None
        return len(self.context_users) - 1

    @property
    def contexts_are_users(self) -> bool:
        return list(self.context_table) == ["user_id"]

    def take(self, rows: np.ndarray) -> "BanditLog":
        """The rounds ``rows`` (same id spaces)."""
        assert self.contexts is not None
        return dataclasses.replace(
            self, users=self.users[rows], actions=self.actions[rows], rewards=self.rewards[rows],
            propensities=self.propensities[rows], timestamps=self.timestamps[rows],
            context={k: v[rows] for k, v in self.context.items()},
            contexts=self.users[rows] if self.contexts is self.users else self.contexts[rows])


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


def _categories(table: pa.Table, name: str) -> np.ndarray:
    """A context / feature column as strings (null -> "")."""
    col = pc.fill_null(pc.cast(table.column(name), pa.string()), "")
    return np.asarray(col.to_pylist(), dtype=object)


def from_table(table: pa.Table, source: str = "<data>", *, csv: bool = False, options: LogOptions | None = None,
               known_users: np.ndarray | None = None, known_items: np.ndarray | None = None,
               **legacy: Any) -> BanditLog:
    """Validate a table in the documented format and build a :class:`BanditLog`.

    ``options`` (:class:`LogOptions`; or its fields as keywords) say how to read it.
    ``known_users`` / ``known_items`` (``(n + 1,)`` id strings in index order, [0]
    padding, e.g. a prepared dataset's ids) fix the index of those ids; ids not in
    them get the next indices.
    """
    if options is None:
        kw: dict[str, Any] = {k: (tuple(v) if k.endswith("_columns") else v) for k, v in legacy.items()
                              if v is not None or k == "slate_size"}
        options = LogOptions(**kw)
    elif legacy:
        raise TypeError("pass either options or its fields, not both")
    path = source
    given = dict(options.columns or {})
    unknown = sorted(set(given) - set(DEFAULT_COLUMNS))
    if unknown:
        raise DataError(path, f"unknown canonical column(s) {unknown} in `columns` (valid: {sorted(DEFAULT_COLUMNS)})")
    merged = {**DEFAULT_COLUMNS, **given}
    row_rounds = "request_id" in given and not given["request_id"]
    mapping = {k: v for k, v in merged.items() if v}
    found = table.column_names
    required = [c for c in REQUIRED if not (row_rounds and c == "request_id")]
    if row_rounds and not given.get("position", "position"):
        required.remove("position")
    for canon in required:
        if canon not in mapping or mapping[canon] not in found:
            src = mapping.get(canon) or canon
            hint = ""
            if canon == "request_id":
                hint = " (no request id, one impression per row? set logs_options.columns.request_id=null)"
            elif canon in given or canon not in DEFAULT_COLUMNS:
                hint = ""
            else:
                hint = f" (map it: logs_options.columns.{canon}=<column>)"
            raise DataError(path, f"column not found (needed for '{canon}'){hint}; columns found: {', '.join(found)}",
                            column=src)
    for extra in (*options.context_columns, *options.action_columns):
        if extra not in found:
            raise DataError(path, f"column not found (listed in logs_options context/action columns); columns "
                            f"found: {', '.join(found)}", column=extra)
    n_rows = table.num_rows
    users = _strings(table, mapping["user_id"], path, csv)
    items = _strings(table, mapping["item_id"], path, csv)
    base = int(options.position_base)
    has_pos = "position" in mapping and mapping["position"] in found
    if has_pos:
        src = mapping["position"]
        pos = _numeric(table, src, path, csv)
        bad = _first(np.isnan(pos) | (pos != np.round(pos)) | (pos < base))
        if bad is not None:
            raise _fail(path, bad, csv, src, f"position must be an integer >= {base} (position_base {base}), "
                        f"got {pos[bad]}")
        pos = pos.astype(np.int64) - base
        if base == 0 and not (pos == 0).any():
            raise DataError(path, "no row has position 0 with position_base 0; positions numbered from 1? set "
                            "logs_options.position_base=1", column=src)
    else:
        pos = np.zeros(n_rows, dtype=np.int64)
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
    bad = _first((reward != 0) & (reward != 1)) if options.binary_reward else None
    if bad is not None:
        raise _fail(path, bad, csv, src, f"reward must be 0 or 1 (binary_reward), got {reward[bad]}")
    bounds = options.bounds()
    if bounds is not None:
        bad = _first((reward < bounds[0]) | (reward > bounds[1]))
        if bad is not None:
            raise _fail(path, bad, csv, src, f"reward {reward[bad]} outside reward_range {list(bounds)}")
    ts = (_numeric(table, mapping["timestamp"], path, csv) if "timestamp" in mapping and mapping["timestamp"] in found
          else np.full(n_rows, np.nan))

    if row_rounds:  # every row its own round; the position becomes a context
        k = 1
        r = n_rows
        row = np.arange(n_rows, dtype=np.int64)
        slot = row.copy()
    else:
        req = _strings(table, mapping["request_id"], path, csv)
        k = int(pos.max()) + 1 if options.slate_size is None else int(options.slate_size)
        bad = _first(pos >= k)
        if bad is not None:
            raise _fail(path, bad, csv, mapping["position"],
                        f"position {pos[bad] + base} out of range {base}..{k - 1 + base} (slate_size {k})")
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
                        f"request {req[dup]!r} shows position {pos[dup] + base} more than once")
        missing = np.flatnonzero(counts == 0)
        if len(missing):
            bad_req = int(missing[0] // k)
            example = _first_known(row == bad_req)
            hint = ("; positions numbered from 1? set logs_options.position_base=1"
                    if base == 0 and missing[0] % k == 0 else "")
            raise _fail(path, example, csv, mapping["position"],
                        f"request {req[example]!r} lacks position {missing[0] % k + base}; every request needs "
                        f"positions {base}..{k - 1 + base} exactly once{hint}")
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
    context: dict[str, np.ndarray] = {}
    for name in options.context_columns:
        vals = _categories(table, name)
        ctx = np.empty(r, dtype=object)
        ctx[row] = vals
        if not row_rounds and not np.array_equal(ctx[row], vals):
            bad = _first_known(ctx[row] != vals)
            raise _fail(path, bad, csv, name, f"request {req[bad]!r} has more than one value of this context")
        context[name] = ctx
    if row_rounds and has_pos:
        context["position"] = pos.astype(str).astype(object)
    action_features = {}
    for name in options.action_columns:
        vals = _categories(table, name)
        feat = np.full(len(item_vocab), "", dtype=object)
        feat[i_idx] = vals
        bad = _first(feat[i_idx] != vals)
        if bad is not None:
            raise _fail(path, bad, csv, name, f"item {items[bad]!r} has more than one value of this per-item "
                        f"feature (action_columns must be constant per item)")
        action_features[name] = feat
    log = BanditLog(slate_users, grid(i_idx, np.int64), grid(reward, np.float64), grid(prop, np.float64),
                    slate_ts, user_vocab, item_vocab, policies, context, action_features, source,
                    row_rounds=row_rounds, position_base=base, reward_range=bounds)
    if context:  # a context = (user, context columns...): its own index space
        keys = np.column_stack([user_vocab[slate_users].astype(str)]
                               + [context[c].astype(str) for c in context])
        uniq, first, inv = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # contexts numbered in order of first appearance
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        log.contexts = rank[np.ravel(inv)] + 1
        log.context_users = np.concatenate([[0], slate_users[first[order]]]).astype(np.int64)
        log.context_table = {"user_id": np.concatenate([[""], user_vocab[slate_users[first[order]]]]).astype(object)}
        for c in context:
            log.context_table[c] = np.concatenate([[""], context[c][first[order]]]).astype(object)
    return log


def read_bandit_log(path: str | Path, options: LogOptions | None = None, **kwargs: Any) -> BanditLog:
    """Read and validate a log file (``.parquet``; anything else is read as CSV).
    ``options`` / ``kwargs`` are those of :func:`from_table`."""
    table, csv = read_table(path)
    return from_table(table, str(path), csv=csv, options=options, **kwargs)


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
