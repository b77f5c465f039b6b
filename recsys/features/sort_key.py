"""The packed sort key of the sorted pass (:mod:`recsys.features.sorted_pass`).

Every counted event gets one int64 key ``(user, item[, category], event type[,
row])``: sorted, the events of one (user, item) are contiguous, and so are a
user's; the row index in the low bits makes the order stable and gives the
permutation back. The keys are the dictionary codes of
:func:`recsys.features.encode.encode_events` (no id string is hashed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.features.definitions import BEHAVIOURAL

#: event type codes 0..len(BEHAVIOURAL)-1 (code -1: event not counted) in the low
#: TYPE_BITS bits of a key; NT columns per (user, item) row (a power of two: shifts)
TYPE_BITS = (len(BEHAVIOURAL) - 1).bit_length()
NT = 1 << TYPE_BITS


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


def sorted_keys(ev: Any, layout: KeyLayout, chunk: int) -> tuple[np.ndarray, np.ndarray | None, int]:
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
