"""Snapshot accumulators of every entity from one sort of the events (numpy).

The counted events are sorted once by a packed int64 key ``(user, item[,
category], event type, row)`` - ``np.sort`` of int64 (vectorised); the row index
in the low bits makes the order stable and gives the permutation back. Sorted,
the events of one (user, item) are contiguous, and so are a user's:

* a chunk of whole users at a time (:data:`CHUNK` rows, small temporaries the
  allocator reuses), each event gets a *cell*: its (user, item) row in the chunk
  times the event type;
* per *spec* - a base weight (1, the value, its square, "has a value", the time)
  times a mode factor (1, a decay factor, inside a window) or a maximum - one
  ``np.add.at`` / ``np.maximum.at`` over the cells gives a ``(rows, event types)``
  matrix, shared by every entity and accumulator that reads the spec; an
  accumulator sums its source's event-type columns;
* ``user_item`` is the matrix itself, ``user`` adds up runs of rows
  (``reduceat``), ``user_category`` and ``item`` add the cells up by group
  (users are whole inside a chunk, so their user x category groups are too;
  items are summed over the chunks).

The chunks are split into :data:`PARTS` fixed parts of about equal rows that run on worker
threads (every call above is a large numpy call that releases the GIL); each part
keeps its own item sums, added in part order, so the result has the same bits
whatever the number of threads. No id string is hashed: the keys are the
dictionary codes of :func:`recsys.features.batch.encode_events`.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recsys.features.definitions import BEHAVIOURAL, ENTITIES, SOURCES, Accumulator

LN2 = math.log(2.0)
#: event type codes 0..len(BEHAVIOURAL)-1 (code -1: event not counted) in the low
#: TYPE_BITS bits of a key; NT columns per (user, item) row (a power of two: shifts)
TYPE_BITS = (len(BEHAVIOURAL) - 1).bit_length()
NT = 1 << TYPE_BITS
#: rows per chunk (rounded up to whole users): temporaries stay small and cache-friendly
CHUNK = 1 << 18
#: the chunks are split into this many parts (about equal rows), one per worker thread
PARTS = 2


@dataclass(frozen=True)
class Spec:
    """One per-event weight summed (or maxed) per fine group: ``base`` (one |
    value | value_sq | value_n | time) times the mode factor of ``variant``
    (``("total",)``, ``("decay", half_life)``, ``("window", size, bucket)``;
    ``("max",)``: the maximum of the value or time instead of a sum)."""

    base: str
    variant: tuple

    @property
    def is_max(self) -> bool:
        return self.variant[0] == "max"


def variant_of(a: Accumulator) -> tuple:
    """The mode factor an accumulator's events are weighted by."""
    if a.mode == "decay":
        return ("decay", a.half_life)
    if a.mode == "window":
        return ("window", a.window, a.bucket)
    return ("total",)


def spec_of(a: Accumulator) -> Spec:
    """The spec an accumulator reads (its types are picked from the spec's columns)."""
    s = SOURCES[a.source]
    if a.mode == "max":
        return Spec("time" if s.weight == "time" else "value", ("max",))
    return Spec(s.weight, variant_of(a))


def type_columns(a: Accumulator) -> list[int]:
    """Event-type columns an accumulator's source counts."""
    types = {t: i for i, t in enumerate(BEHAVIOURAL)}
    return [types[e] for e in SOURCES[a.source].event_types]


# ---------------------------------------------------------------- sort key


@dataclass(frozen=True)
class KeyLayout:
    """``fine = ((user * n_items + item) * n_cats + cat) * NT + type``; ``n_cats`` is
    1 when the category is a function of the item (then it stays out of the key).
    Dropped events get ``user = n_users`` and sort last. ``row_bits``: the row index
    packed below the fine key (0: not packed, the order comes from an argsort)."""

    n_users: int
    n_items: int
    n_cats: int
    row_bits: int

    @property
    def per_user(self) -> int:
        return self.n_items * self.n_cats * NT

    @property
    def dropped_fine(self) -> int:
        return self.n_users * self.per_user


def choose_layout(n_rows: int, n_users: int, n_items: int, n_cats: int, cat_in_key: bool,
                  pack: bool = True) -> KeyLayout:
    """Pack the row too when everything fits in 63 bits (and ``pack``), else sort
    the fine key with a stable argsort. Raises when even the fine key does not fit."""
    cats = n_cats if cat_in_key else 1
    width = (n_users + 1) * max(n_items, 1) * cats * NT
    if width >= 1 << 63:
        raise ValueError(f"{n_users} users x {n_items} items x {cats} categories: too many for one int64 key")
    row_bits = max(int(n_rows - 1).bit_length(), 1)
    packed = pack and width <= (1 << (63 - row_bits))
    return KeyLayout(n_users, max(n_items, 1), cats, row_bits if packed else 0)


def item_category(item: np.ndarray, cat: np.ndarray, n_items: int) -> np.ndarray | None:
    """Category code of every item code when each item has one category (over all
    rows, counted or not), else None."""
    of = np.zeros(max(n_items, 1), dtype=np.int32)
    of[item] = cat
    return of if np.array_equal(of[item], cat) else None


def sorted_keys(ev: Any, layout: KeyLayout, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray | None, int]:
    """(sorted packed keys, or sorted fine keys; row order when not packed; number of
    counted events). Built in chunks (small temporaries), sorted in place."""
    n = ev.n
    key = np.empty(n, dtype=np.int64)
    u, i, c, code = ev.ids["user_id"], ev.ids["item_id"], ev.ids["category"], ev.code
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        k = key[lo:hi]
        k[...] = u[lo:hi]
        k *= layout.n_items
        k += i[lo:hi]
        if layout.n_cats > 1:
            k *= layout.n_cats
            k += c[lo:hi]
        k *= NT
        k += code[lo:hi]
        np.putmask(k, code[lo:hi] < 0, layout.dropped_fine)
        if layout.row_bits:
            k <<= layout.row_bits
            k += np.arange(lo, hi, dtype=np.int64)
    n_kept = int(np.count_nonzero(ev.code >= 0))
    if layout.row_bits:
        key.sort()
        return key, None, n_kept
    order = np.argsort(key, kind="stable")
    return key[order], order, n_kept


def chunk_bounds(next_user: Any, n_kept: int, chunk: int) -> list[tuple[int, int]]:
    """[lo, hi) sorted-row ranges of about ``chunk`` rows, each made of whole users.
    ``next_user(pos)``: the first sorted row of the user after the one at ``pos``."""
    bounds, lo = [], 0
    while lo < n_kept:
        hi = min(lo + chunk, n_kept)
        if hi < n_kept:
            hi = min(next_user(hi - 1), n_kept)
        bounds.append((lo, hi))
        lo = hi
    return bounds


# ---------------------------------------------------------------- one chunk


@dataclass
class ChunkGroups:
    """Group structure of one chunk of sorted events (whole users).

    *Rows* are the (user, item[, category]) groups of the chunk, in key order;
    a *cell* is (row, event type) = ``row * NT + type``."""

    cell: np.ndarray          # cell of every event
    cells: np.ndarray         # the cells that have events, ascending
    user: np.ndarray          # per row
    item: np.ndarray
    cat: np.ndarray
    ui_starts: np.ndarray | None  # first row of every user_item (None: one row each)
    user_starts: np.ndarray   # first row of every user
    uc_gid: np.ndarray        # user x category group of every row
    uc_keys: tuple[np.ndarray, np.ndarray]  # (user, category) of every user x category group

    @property
    def n_rows(self) -> int:
        return len(self.user)

    def cells_of(self, group_of_row: np.ndarray) -> np.ndarray:
        """``group * NT + type`` of every cell, for a grouping of the rows."""
        return (group_of_row[self.cells >> TYPE_BITS] << TYPE_BITS) + (self.cells & (NT - 1))


def _run_starts(x: np.ndarray) -> np.ndarray:
    """Indices where a run of equal values starts (0 included)."""
    out = np.empty(len(x), dtype=bool)
    if len(x):
        out[0] = True
        np.not_equal(x[1:], x[:-1], out=out[1:])
    return np.flatnonzero(out)


def chunk_groups(fine: np.ndarray, layout: KeyLayout, cat_of_item: np.ndarray | None, n_cats: int) -> ChunkGroups:
    """Rows, cells, users and user x category groups of a chunk from its sorted fine keys."""
    uic = fine >> TYPE_BITS
    row_starts = _run_starts(uic)
    first = np.zeros(len(fine), dtype=np.intp)
    first[row_starts] = NT
    cell = np.cumsum(first)
    cell -= NT
    cell += fine & (NT - 1)
    keys = uic[row_starts]
    cat = keys % layout.n_cats
    ui = keys // layout.n_cats
    item, user = ui % layout.n_items, ui // layout.n_items
    ui_starts = _run_starts(ui) if layout.n_cats > 1 else None
    if cat_of_item is not None:
        cat = cat_of_item[item].astype(np.int64)
    u0 = int(user[0]) if len(user) else 0
    width = (int(user[-1]) - u0 + 1) * n_cats if len(user) else 1
    uc_gid, present = factorize_dense((user - u0) * n_cats + cat, width)
    return ChunkGroups(cell, cell[_run_starts(cell)], user, item, cat, ui_starts, _run_starts(user), uc_gid,
                       (present // n_cats + u0, present % n_cats))


def factorize_dense(key: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(dense group id per element, key per group, ascending) of int keys in [0, width)."""
    if width <= max(4 * len(key), 1 << 22):
        present = np.flatnonzero(np.bincount(key, minlength=width))
        remap = np.empty(width, dtype=np.int64)
        remap[present] = np.arange(len(present))
        return remap[key], present
    present, gid = np.unique(key, return_inverse=True)
    return gid, present


class ChunkWeights:
    """Per-event weights of one chunk (``t``, ``value`` and ``cell`` in sorted
    order), each computed once and shared by every spec and entity."""

    def __init__(self, t: np.ndarray, value: np.ndarray, cell: np.ndarray, as_of: float,
                 windows: list[tuple]):
        self.t, self.value, self.cell, self.as_of = t, value, cell, as_of
        self.windows = windows
        self._cache: dict[Any, Any] = {}

    def _get(self, key: Any, fn: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def decay(self, half_life: float) -> np.ndarray:
        def factor() -> np.ndarray:
            x = self.t - self.as_of
            x *= LN2 / half_life
            return np.exp(x, out=x)
        return self._get(("decay", half_life), factor)

    def window_rows(self, variant: tuple) -> np.ndarray:
        """Events inside a window: ``floor(t / bucket) >= first bucket``, tested on the
        events after the earliest start of any window (minus a bucket: a superset)."""
        def candidates() -> np.ndarray:
            lo = min((_first_bucket(self.as_of, v) - 1.0) * v[2] for v in self.windows)
            return np.flatnonzero(self.t >= lo)

        def rows() -> np.ndarray:
            cand = self._get("window_candidates", candidates)
            # floor(t / b) >= first_bucket  <=>  t / b >= first_bucket (an integer), exactly
            return cand[self.t[cand] / variant[2] >= _first_bucket(self.as_of, variant)]
        return self._get(variant, rows)

    def base(self, name: str) -> np.ndarray | None:
        """value (0 where missing), its square, 1 where present, time; None: 1."""
        if name == "one":
            return None
        if name == "value":
            return self._get("value", lambda: np.where(np.isnan(self.value), 0.0, self.value))
        if name == "value_sq":
            return self._get("value_sq", lambda: np.square(self.base("value")))
        if name == "value_n":
            return self._get("value_n", lambda: (~np.isnan(self.value)).astype(np.float64))
        if name == "time":
            return self.t
        raise ValueError(name)

    def cells_and_weights(self, spec: Spec) -> tuple[np.ndarray, np.ndarray | float]:
        """(cell of every event the spec counts, its weight)."""
        if spec.is_max:
            if spec.base == "time":
                return self.cell, self.t
            return self.cell, self._get("max_value", lambda: np.where(np.isnan(self.value), -np.inf, self.value))
        b = self.base(spec.base)
        kind = spec.variant[0]
        if kind == "window":
            rows = self.window_rows(spec.variant)
            cells = self._get(("cells", spec.variant), lambda: self.cell[rows])
            return cells, 1.0 if b is None else b[rows]
        if kind == "decay":
            f = self.decay(spec.variant[1])
            return self.cell, f if b is None else b * f
        return self.cell, 1.0 if b is None else b


def _first_bucket(as_of: float, variant: tuple) -> float:
    a = Accumulator("", "event", "window", window=variant[1], bucket=variant[2])
    return float(np.floor(as_of / a.bucket) - (a.n_buckets - 1))


def cell_matrix(spec: Spec, w: ChunkWeights, n_rows: int, out: np.ndarray) -> np.ndarray:
    """``(rows, event types)``: the sum (or max) of the spec's weight per cell, in
    ``out`` (reused: a fresh array per spec costs page faults). Within a cell the
    events are added in input order (the sort is stable)."""
    cells, x = w.cells_and_weights(spec)
    m = out[: n_rows * NT]
    m.fill(-np.inf if spec.is_max else 0.0)
    (np.maximum if spec.is_max else np.add).at(m, cells, x)
    return m.reshape(n_rows, NT)


def reduce_runs(spec: Spec, m: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Rows of ``m`` added (maxed) over runs starting at ``starts`` (users, user x items)."""
    return (np.maximum if spec.is_max else np.add).reduceat(m, starts, axis=0) if len(m) else m


def scatter_cells(spec: Spec, m: np.ndarray, g: ChunkGroups, idx: np.ndarray, n_groups: int) -> np.ndarray:
    """The cells of ``m`` added (or maxed) into ``(n_groups, event types)``; ``idx``:
    :meth:`ChunkGroups.cells_of` of the grouping."""
    vals = m.reshape(-1)[g.cells]
    if spec.is_max:
        out = np.full(n_groups * NT, -np.inf)
        np.maximum.at(out, idx, vals)
    else:
        out = np.bincount(idx, vals, minlength=n_groups * NT)
    return out.reshape(n_groups, NT)


def pick_types(spec: Spec, m: np.ndarray, cols: list[int]) -> np.ndarray:
    """One accumulator from a spec matrix: its event types' columns summed (maxed;
    -inf -> NaN: nothing seen)."""
    if len(cols) == 1:
        v = m[:, cols[0]].copy()
    else:
        v = m[:, cols].max(axis=1) if spec.is_max else m[:, cols].sum(axis=1)
    if spec.is_max:
        v[np.isneginf(v)] = np.nan
    return v


# ---------------------------------------------------------------- all chunks


@dataclass
class SortedPlan:
    """What to compute: the accumulators of each entity and the specs they read."""

    accs: dict[str, list[Accumulator]]
    specs: dict[str, list[Spec]] = field(init=False)

    def __post_init__(self) -> None:
        self.specs = {e: list(dict.fromkeys(spec_of(a) for a in accs)) for e, accs in self.accs.items()}

    @property
    def windows(self) -> list[tuple]:
        return list(dict.fromkeys(s.variant for s in self.all_specs if s.variant[0] == "window"))

    @property
    def all_specs(self) -> list[Spec]:
        return list(dict.fromkeys(s for specs in self.specs.values() for s in specs))


@dataclass
class ChunkResult:
    values: dict[str, dict[str, np.ndarray]]   # entity -> accumulator -> values (user, user_item, uc)
    keys: dict[str, dict[str, np.ndarray]]     # entity -> key column -> codes


class ItemSums:
    """Item x type matrices per spec, added up over the chunks one worker visits."""

    def __init__(self, specs: list[Spec], n_items: int):
        self.n_items = n_items
        self.m = {s: np.full((n_items, NT), -np.inf if s.is_max else 0.0) for s in specs}
        self.seen = np.zeros(n_items, dtype=bool)

    def add_cells(self, spec: Spec, m: np.ndarray, g: ChunkGroups, idx: np.ndarray) -> None:
        """A chunk's cells added (maxed) in place (no temporary item-sized array)."""
        (np.maximum if spec.is_max else np.add).at(self.m[spec].reshape(-1), idx, m.reshape(-1)[g.cells])

    def merge(self, other: "ItemSums") -> None:
        for s, m in other.m.items():
            (np.maximum if s.is_max else np.add)(self.m[s], m, out=self.m[s])
        self.seen |= other.seen


def run_chunk(lo: int, hi: int, keys: np.ndarray, order: np.ndarray | None, ev: Any, layout: KeyLayout,
              plan: SortedPlan, as_of: float, cat_of_item: np.ndarray | None, items: ItemSums | None) -> ChunkResult:
    """Accumulators of the users in sorted rows [lo, hi) (user, user_item,
    user_category); item sums go into ``items``."""
    k = keys[lo:hi]
    if layout.row_bits:
        rows = k & ((1 << layout.row_bits) - 1)
        fine = k >> layout.row_bits
    else:
        rows, fine = order[lo:hi], k
    g = chunk_groups(fine, layout, cat_of_item, len(ev.dicts["category"]))
    w = ChunkWeights(np.take(ev.t, rows), np.take(ev.value, rows), g.cell, as_of, plan.windows)
    values: dict[str, dict[str, np.ndarray]] = {e: {} for e in plan.accs if e != "item"}
    n_uc = len(g.uc_keys[0])
    uc_idx = g.cells_of(g.uc_gid) if "user_category" in plan.accs else None
    item_idx = g.cells_of(g.item) if items is not None else None
    if items is not None:
        items.seen[g.item] = True
    buf = np.empty(g.n_rows * NT)
    for spec in plan.all_specs:
        m = cell_matrix(spec, w, g.n_rows, buf)
        per_entity = {}
        if spec in plan.specs.get("user_item", ()):
            per_entity["user_item"] = m if g.ui_starts is None else reduce_runs(spec, m, g.ui_starts)
        if spec in plan.specs.get("user", ()):
            per_entity["user"] = reduce_runs(spec, m, g.user_starts)
        if spec in plan.specs.get("user_category", ()):
            per_entity["user_category"] = scatter_cells(spec, m, g, uc_idx, n_uc)
        if spec in plan.specs.get("item", ()):
            items.add_cells(spec, m, g, item_idx)  # type: ignore[union-attr]
        for entity, em in per_entity.items():
            for a in plan.accs[entity]:
                if spec_of(a) == spec:
                    values[entity][a.name] = pick_types(spec, em, type_columns(a))
    keys_out = {}
    for entity in values:
        if entity == "user":
            keys_out[entity] = {"user_id": g.user[g.user_starts]}
        elif entity == "user_item":
            s = slice(None) if g.ui_starts is None else g.ui_starts
            keys_out[entity] = {"user_id": g.user[s], "item_id": g.item[s]}
        else:
            keys_out[entity] = {"user_id": g.uc_keys[0], "category": g.uc_keys[1]}
    return ChunkResult(values, keys_out)


def sorted_accumulators(ev: Any, accs: dict[str, list[Accumulator]], as_of: float, chunk: int | None = None,
                        threads: int = 1, cat_in_key: bool | None = None, pack: bool = True
                        ) -> dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """entity -> (accumulator name -> values, key column -> codes) for the non-session
    accumulators ``accs`` of ``user``, ``item``, ``user_item``, ``user_category``.

    ``threads``: chunks run on this many threads (numpy releases the GIL inside
    each call). ``cat_in_key``: force the category into the sort key (default:
    only when an item has several categories). ``pack=False``: sort with an argsort
    instead of packing the row index into the key (the path for huge inputs)."""
    chunk = chunk or CHUNK
    plan = SortedPlan({e: [a for a in a_list if not SOURCES[a.source].session] for e, a_list in accs.items()})
    n_users, n_items, n_cats = (len(ev.dicts[c]) for c in ("user_id", "item_id", "category"))
    cat_of_item = item_category(ev.ids["item_id"], ev.ids["category"], n_items) if cat_in_key is not True else None
    layout = choose_layout(ev.n, n_users, n_items, n_cats, cat_of_item is None, pack)
    keys, order, n_kept = sorted_keys(ev, layout, chunk)
    shift = layout.row_bits

    def next_user(pos: int) -> int:
        user = int(keys[pos] >> shift) // layout.per_user
        return int(np.searchsorted(keys, ((user + 1) * layout.per_user) << shift, side="left"))

    bounds = chunk_bounds(next_user, n_kept, chunk)

    def work(part: list[tuple[int, int]]) -> tuple[list[ChunkResult], ItemSums | None]:
        items = ItemSums(plan.specs["item"], n_items) if "item" in plan.accs else None
        return [run_chunk(lo, hi, keys, order, ev, layout, plan, as_of, cat_of_item, items) for lo, hi in part], items

    # a fixed split of the chunks whatever the threads: the item sums of each part are
    # added in part order, so every run gives the same bits
    parts = balanced_parts([hi - lo for lo, hi in bounds], PARTS)
    if threads > 1:
        with ThreadPoolExecutor(min(threads, PARTS)) as pool:
            done = list(pool.map(work, [[bounds[i] for i in p] for p in parts]))
    else:
        done = [work([bounds[i] for i in p]) for p in parts]
    results: list[ChunkResult] = [None] * len(bounds)  # type: ignore[list-item]
    for p, (res, _) in zip(parts, done):
        for i, r in zip(p, res):
            results[i] = r
    out = {e: _concat(e, plan, results) for e in plan.accs if e != "item"}
    if "item" in plan.accs:
        out["item"] = _item_result(plan, [items for _, items in done], n_items)  # type: ignore[misc]
    return out


def balanced_parts(sizes: list[int], n_parts: int) -> list[list[int]]:
    """Chunk indices split into ``n_parts`` parts of about equal rows (largest chunk
    first to the lightest part; one heavy user can make one chunk much larger than
    the others), each part in chunk order. Depends on the sizes only."""
    parts: list[list[int]] = [[] for _ in range(n_parts)]
    load = [0] * n_parts
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        j = min(range(n_parts), key=lambda j: (load[j], j))
        parts[j].append(i)
        load[j] += sizes[i]
    return [sorted(p) for p in parts]


def _concat(entity: str, plan: SortedPlan, results: list[ChunkResult]
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype=dtype)

    vals = {a.name: cat([r.values[entity][a.name] for r in results], np.float64) for a in plan.accs[entity]}
    keys = {c: cat([r.keys[entity][c] for r in results], np.int64) for c in ENTITIES[entity]}
    return vals, keys


def _item_result(plan: SortedPlan, parts: list[ItemSums], n_items: int
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    total = ItemSums(plan.specs["item"], n_items)
    for p in parts:
        total.merge(p)
    present = np.flatnonzero(total.seen)
    vals = {a.name: pick_types(spec_of(a), total.m[spec_of(a)][present], type_columns(a)) for a in plan.accs["item"]}
    return vals, {"item_id": present.astype(np.int64)}
