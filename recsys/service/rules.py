"""Business rules of a decision: candidate filters, the ranker's request features,
and the diversity re-rank (MMR over item embeddings or per-category caps).
Frequency caps are enforced atomically by the state backend
(:meth:`recsys.service.state.State.reserve`)."""
from __future__ import annotations

from itertools import repeat
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from recsys.features.ranker import smoothed_ctr
from recsys.service.bundles import BundleSet


def filter_items(items: Iterable[str], *, drop: set[str], catalogue: Any = None, limit: int | None = None
                 ) -> list[str]:
    """``items`` in order, without duplicates, ``drop`` (exclusions, blocked, seen)
    and items the catalogue marks unavailable (or does not list); at most ``limit``
    (the scan stops there, so a long list such as the whole catalogue costs O(limit))."""
    out, seen = [], set(drop)
    servable = None if catalogue is None else catalogue.servable
    for i in items:
        if limit is not None and len(out) >= limit:
            break
        if i in seen or (servable is not None and i not in servable):
            continue
        seen.add(i)
        out.append(i)
    return out


def _code(raw: str, vocab: int | None) -> int:
    """An integer id for an int64 ranker input (0 = unknown)."""
    try:
        v = int(raw)
    except (TypeError, ValueError):
        return 0
    return v if v > 0 and (vocab is None or v < vocab) else 0


def table_column(table: Any, name: str, dtype: Any) -> dict[str, Any] | None:
    """The catalogue / users column feeding ranker input ``name``: for an integer
    input ``<name>_idx`` (codes) when the table has it, else ``<name>``."""
    if table is None:
        return None
    if dtype is np.int64 and f"{name}_idx" in table.columns:
        return table.columns[f"{name}_idx"]
    return table.columns.get(name)


class ItemInputs:
    """The ranker's item-level inputs (``item`` codes and catalogue columns) as arrays
    by catalogue row, built once per bundle set, so a request gathers them with one
    dictionary lookup per item instead of one per item and column."""

    def __init__(self, bs: BundleSet):
        cat = bs.catalogue
        ids = cat.item_ids.tolist() if cat is not None else []
        self.row = {i: r for r, i in enumerate(ids)}
        self.arrays: dict[str, np.ndarray] = {}
        for name, spec in bs.ranker.inputs.items():
            dtype = np.int64 if spec["dtype"] == "int64" else np.float32
            vocab = spec.get("vocab_size")
            if name == "item":
                a = np.array([_code(i, vocab) for i in ids], dtype=np.int64)
            elif name in _COMPUTED or cat is None or (c := table_column(cat, name, dtype)) is None:
                continue
            else:
                a = np.array([c.get(i) or 0 for i in ids], dtype=dtype)
            if dtype is np.int64 and vocab is not None:
                a = np.where((a >= 0) & (a < vocab), a, 0)
            self.arrays[name] = np.asarray(a, dtype=dtype)

    def rows(self, items: Sequence[str]) -> np.ndarray | None:
        """Catalogue rows of ``items``; None when one is not listed."""
        rows = np.fromiter(map(self.row.get, items, repeat(-1)), dtype=np.int64, count=len(items))
        return None if len(rows) and rows.min() < 0 else rows


#: inputs computed per request (never read from the catalogue)
_COMPUTED = ("position", "hour", "user_ctr", "user_log_imps", "item_ctr", "item_log_imps")


def ranker_features(bs: BundleSet, user: str, items: Sequence[str], t: float,
                    user_counts: tuple[float, float], item_counts: np.ndarray) -> dict[str, np.ndarray]:
    """The ranker's inputs for ``items`` of one request at time ``t``: the same
    definitions as :func:`recsys.features.ranker.build_ranker_features` (smoothed
    CTR and log impressions from the clicks / impressions before now, UTC hour,
    position 0), the ranker's behavioural features computed online, plus item- and
    user-level columns of the catalogue / users tables."""
    specs = bs.ranker.inputs
    n = len(items)
    uc, ui = user_counts
    computed: dict[str, Any] = {
        "position": np.zeros(n, dtype=np.int64),
        "hour": np.full(n, int(t // 3600) % 24, dtype=np.int64),
        "user_ctr": np.full(n, smoothed_ctr(np.array([uc]), np.array([ui]))[0], dtype=np.float32),
        "user_log_imps": np.full(n, np.log1p(ui), dtype=np.float32),
        "item_ctr": smoothed_ctr(item_counts[:, 0], item_counts[:, 1]),
        "item_log_imps": np.log1p(item_counts[:, 1]).astype(np.float32),
    }
    if bs.behaviour is not None:  # the ranker's behavioural features, online (recsys.service.behaviour)
        cats = bs.catalogue.category if bs.catalogue is not None else {}
        computed.update(bs.behaviour.features(user, items, [cats.get(i) for i in items], t))
    if bs.item_inputs is None:
        bs.item_inputs = ItemInputs(bs)
    table: ItemInputs = bs.item_inputs
    rows = table.rows(items)
    out: dict[str, np.ndarray] = {}
    for name, spec in specs.items():
        dtype = np.int64 if spec["dtype"] == "int64" else np.float32
        vocab = spec.get("vocab_size")
        if name in computed:
            a = computed[name]
        elif rows is not None and name in table.arrays:  # gathered: already coded and clipped
            out[name] = table.arrays[name][rows]
            continue
        elif name == "user":
            a = np.full(n, _code(user, vocab), dtype=np.int64)
        elif name == "item":
            a = np.array([_code(i, vocab) for i in items], dtype=np.int64)
        elif bs.catalogue is not None and (c := table_column(bs.catalogue, name, dtype)) is not None:
            a = np.array([c.get(i) or 0 for i in items], dtype=dtype)
        else:
            a = np.full(n, table_column(bs.users, name, dtype).get(user) or 0, dtype=dtype)
        if dtype is np.int64 and vocab is not None:
            a = np.where((a >= 0) & (a < vocab), a, 0)
        out[name] = np.asarray(a, dtype=dtype)
    return out


def mmr_order(items: Sequence[str], relevance: np.ndarray, vectors: np.ndarray, n: int, lam: float) -> list[str]:
    """Maximal marginal relevance: greedily pick ``n`` items, each maximising
    ``lam * rel - (1 - lam) * max cosine similarity to the picked ones``
    (relevance min-max scaled to [0, 1]); ``vectors`` (m, D) are the items' embeddings.
    Returns the ``n`` picks in pick order followed by the other items in their
    given order (all ``m`` items)."""
    m = len(items)
    if m == 0:
        return []
    rel = np.asarray(relevance, dtype=np.float64)
    span = rel.max() - rel.min()
    base = lam * ((rel - rel.min()) / span if span > 0 else np.ones(m))
    V = np.asarray(vectors, dtype=np.float64)
    V = V / np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-12)
    penalty = (1 - lam) * (V @ V.T)                      # (m, m) scaled similarities
    picked: list[int] = []
    score = base.copy()                                  # base - max penalty to the picked ones
    for _ in range(min(n, m)):
        j = int(np.argmax(score))
        picked.append(j)
        np.minimum(score, base - penalty[j], out=score)
        score[j] = -np.inf
    taken = set(picked)
    return [items[j] for j in picked] + [items[j] for j in range(m) if j not in taken]


def category_cap_order(items: Sequence[str], category: Mapping[str, str], max_per_category: int) -> list[str]:
    """``items`` in order, keeping at most ``max_per_category`` of each category
    (items without a category share the category ``""``)."""
    counts: dict[str, int] = {}
    out = []
    for i in items:
        c = category.get(i, "")
        if counts.get(c, 0) < max_per_category:
            counts[c] = counts.get(c, 0) + 1
            out.append(i)
    return out
