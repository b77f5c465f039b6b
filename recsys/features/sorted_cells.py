"""One chunk of the sorted pass: cells, per-event weights and cell matrices.

A chunk is a run of whole users in the sorted events. Each event gets a *cell*:
its (user, item[, category]) row in the chunk times the event type. Per *spec* - a
base weight (1, the value, its square, "has a value", the time) times a mode
factor (1, a decay factor, inside a window) or a maximum - one ``np.add.at`` /
``np.maximum.at`` over the cells gives a ``(rows, event types)`` matrix, which
every entity and accumulator that reads the spec shares; an accumulator sums its
source's event-type columns (:func:`pick_types`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.features.definitions import BEHAVIOURAL, SOURCES, Accumulator
from recsys.features.sort_key import NT, TYPE_BITS, KeyLayout

LN2 = math.log(2.0)


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
