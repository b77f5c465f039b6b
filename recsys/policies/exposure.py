"""Exposure-aware re-ranking (numpy, torch-free): trade a little relevance for
exposure closer to a target share, amortised over lists.

:func:`exposure_rerank` fills each list position by position with the candidate
maximising

    relevance(c) - weight * max(0, log(share[g(c)] / target[g(c)]))

where ``relevance`` is the candidate's score min-max scaled to ``[0, 1]`` within
its list, ``g(c)`` the candidate's item group (a category, a provider, or the
item itself), ``share[g]`` the group's share of all exposure given so far (the
running state, position-discounted like DCG: ``1 / log2(2 + pos)``) and
``target[g]`` its target share. Only over-exposed groups are penalised, by how
many times over their target they are (log scale, so one knob works for
categories and single items); ``weight = 0`` returns the lists by score. The
state carries across calls (amortised exposure: a decision service keeps it per
surface and passes it back in), and lists are processed in batches of
``batch_size`` (the state is updated after each position of a batch; 1 = strictly
one list after another).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

_EPS = 1e-12


def position_discount(k: int) -> np.ndarray:
    """``1 / log2(2 + pos)`` for positions ``0..k-1``: (k,)."""
    return 1.0 / np.log2(np.arange(k, dtype=np.float64) + 2.0)


def exposure_rerank(candidates: np.ndarray, scores: np.ndarray, k: int, *, item_group: np.ndarray | None = None,
                    target_share: np.ndarray | None = None, weight: float = 0.5, state: np.ndarray | None = None,
                    batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidate lists for exposure.

    Args:
        candidates: (U, C) item ids, ``0`` = empty slot (never chosen).
        scores: (U, C) model scores of the candidates (higher is better).
        k: list length to return (``<= C``).
        item_group: (n_items + 1,) group code ``>= 0`` per item id; ``None``: every
            item is its own group (item-level exposure; codes are the item ids).
        target_share: (G,) non-negative target exposure share per group (normalised
            here); ``None``: equal shares. Groups with target 0 are treated as
            maximally over-exposed once shown.
        weight: strength of the exposure penalty (0 = plain ranking by score).
        state: (G,) exposure given so far (returned updated; not modified in place).

    Returns:
        ``(lists (U, k) item ids with 0 for empty slots, new state (G,))``.
    """
    cand = np.asarray(candidates, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if cand.shape != s.shape or cand.ndim != 2:
        raise ValueError(f"candidates {cand.shape} and scores {s.shape} must be the same (U, C) shape")
    n_rows, n_cand = cand.shape
    if not 1 <= k <= n_cand:
        raise ValueError(f"k must be in 1..{n_cand} (the number of candidates), got {k}")
    if weight < 0 or batch_size < 1:
        raise ValueError(f"need weight >= 0 and batch_size >= 1, got {weight}, {batch_size}")
    if item_group is None:
        n_groups = int(cand.max(initial=0)) + 1 if state is None else len(state)
        groups = cand
    else:
        ig = np.asarray(item_group, dtype=np.int64)
        n_groups = int(ig.max(initial=0)) + 1 if state is None else len(state)
        groups = ig[cand]
    if int(groups.max(initial=0)) >= n_groups:
        raise ValueError(f"group code {int(groups.max())} outside the state's {n_groups} groups")
    if target_share is None:
        target = np.ones(n_groups)
        if item_group is None:
            target[0] = 0.0  # id 0 is padding, not an item
    else:
        target = np.asarray(target_share, dtype=np.float64)
    if len(target) != n_groups or (target < 0).any() or target.sum() <= 0:
        raise ValueError(f"target_share must be {n_groups} non-negative values with a positive sum")
    target = target / target.sum()
    exposure = np.zeros(n_groups) if state is None else np.array(state, dtype=np.float64)

    valid = cand > 0
    lo = np.where(valid, s, np.inf).min(axis=1, keepdims=True)
    hi = np.where(valid, s, -np.inf).max(axis=1, keepdims=True)
    rel = np.where(valid, (s - lo) / np.maximum(hi - lo, _EPS), -np.inf)
    rel[~np.isfinite(lo[:, 0])] = -np.inf  # rows without any candidate
    disc = position_discount(k)
    out = np.zeros((n_rows, k), dtype=np.int64)
    for start in range(0, n_rows, batch_size):
        rows = slice(start, min(start + batch_size, n_rows))
        r, g = rel[rows].copy(), groups[rows]
        b = np.arange(r.shape[0])
        for pos in range(k):
            total = exposure.sum()
            if weight > 0 and total > 0:
                ratio = (exposure / total) / np.maximum(target, _EPS)
                penalty = weight * np.log(np.maximum(ratio, 1.0))
                adjusted = r - penalty[g]
            else:
                adjusted = r
            pick = np.argmax(adjusted, axis=1)
            ok = np.isfinite(r[b, pick])
            out[rows, pos] = np.where(ok, cand[rows][b, pick], 0)
            np.add.at(exposure, g[b[ok], pick[ok]], disc[pos])
            r[b, pick] = -np.inf
    return out, exposure


def exposure_order(items: Sequence[str], scores: Sequence[float], groups: Sequence[str], k: int, *,
                   state: Mapping[str, float] | None = None, target_share: Mapping[str, float] | None = None,
                   weight: float = 0.5) -> tuple[list[str], dict[str, float]]:
    """One request's list by string ids (the decision service's shape): the first
    ``k`` of ``items`` re-ranked by :func:`exposure_rerank` against the running
    ``state`` (exposure per group name, e.g. kept per surface in the service's
    state backend), followed by the remaining items in their given order.

    ``groups``: the group (category, provider) of each item; ``target_share``:
    target per group name (missing groups get 0; ``None``: equal over the groups
    seen in ``state`` and ``groups``). Returns ``(ordered items, new state)``;
    nothing is modified in place.
    """
    if not (len(items) == len(scores) == len(groups)):
        raise ValueError(f"items, scores and groups must have one entry per item "
                         f"({len(items)}, {len(scores)}, {len(groups)})")
    if not items:
        return [], dict(state or {})
    names = sorted(set(groups) | set(state or {}) | set(target_share or {}))
    code = {g: i for i, g in enumerate(names)}
    kk = min(k, len(items))
    cand = np.arange(1, len(items) + 1)[None, :]
    item_group = np.array([0] + [code[g] for g in groups], dtype=np.int64)
    prior = np.array([float((state or {}).get(g, 0.0)) for g in names])
    target = None if target_share is None else np.array([float(target_share.get(g, 0.0)) for g in names])
    top, new = exposure_rerank(cand, np.asarray(scores, dtype=np.float64)[None, :], kk, item_group=item_group,
                               target_share=target, weight=weight, state=prior, batch_size=1)
    chosen = [int(c) - 1 for c in top[0] if c > 0]
    taken = set(chosen)
    ordered = [items[j] for j in chosen] + [it for j, it in enumerate(items) if j not in taken]
    return ordered, {g: float(new[code[g]]) for g in names}
