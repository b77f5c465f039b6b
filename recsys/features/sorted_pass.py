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
dictionary codes of :func:`recsys.features.encode.encode_events`. The key layout
is :mod:`recsys.features.sort_key`, one chunk's work :mod:`recsys.features.sorted_cells`.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recsys.features.definitions import ENTITIES, SOURCES, Accumulator
from recsys.features.sort_key import NT, KeyLayout, choose_layout, chunk_bounds, item_category, sorted_keys
from recsys.features.sorted_cells import (
    ChunkGroups,
    ChunkWeights,
    Spec,
    cell_matrix,
    chunk_groups,
    pick_types,
    reduce_runs,
    scatter_cells,
    spec_of,
    type_columns,
)

#: rows per chunk (rounded up to whole users): temporaries stay small and cache-friendly
CHUNK = 1 << 18
#: the chunks are split into this many parts (about equal rows), one per worker thread
PARTS = 2


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
