"""Cold-start evaluation: items withheld from training entirely.

Protocol (``cold_start_split``): a random ``fraction`` of the items is withheld
(every interaction with them is removed); the remaining "warm" interactions are
split as usual (the model trains and selects its epoch on warm data only). The
cold evaluation set holds, for every user who interacted with a withheld item,
those items as targets and the user's warm training items as history.

Cold items are then ranked either among the withheld items only (``"cold"``: the
new-item retrieval question, which of the new items does this user want) or in
the full catalogue (``"full"``, history excluded: new items must also beat every
warm item, the demanding version).

Baselines: :class:`CategoryPopularity` (a cold item scores the mean training
popularity per item of its categories / genres) and uniform random scores.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.data.prepare import PreparedData
from recsys.data.splits import EvalSet, Split
from recsys.evaluation.ranking import evaluate_ranking
from recsys.utils.errors import DataError
from recsys.utils.sparse import CSR


@dataclass
class ColdStartSplit:
    warm_data: PreparedData  # same ids and side tables, interactions without the cold items
    split: Split  # split of the warm data
    cold: EvalSet  # targets = cold items, history = warm training items
    cold_items: np.ndarray  # sorted item indices


def cold_start_split(data: PreparedData, splitter: Any, fraction: float = 0.1, seed: int = 0) -> ColdStartSplit:
    if not 0 < fraction < 1:
        raise DataError(None, f"cold-start fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    n_cold = max(1, int(round(fraction * data.n_items)))
    cold_items = np.sort(rng.choice(np.arange(1, data.n_items + 1), size=n_cold, replace=False))
    is_cold = np.zeros(data.n_items + 1, dtype=bool)
    is_cold[cold_items] = True
    users, items, _ = data.arrays()
    warm_rows = ~is_cold[items]
    warm = replace(data, interactions=data.interactions.filter(pa.array(warm_rows)))
    split = splitter.split(warm)
    tu, ti, _ = split.train_arrays()
    cu, ci = users[~warm_rows], items[~warm_rows]
    eval_users = np.unique(cu)
    if len(eval_users) == 0:
        raise DataError(None, "no interactions with the withheld items")
    row_of = np.full(data.n_users + 1, -1)
    row_of[eval_users] = np.arange(len(eval_users))
    keep_hist = row_of[tu] >= 0
    history = CSR.from_sorted_rows(row_of[tu[keep_hist]], ti[keep_hist], len(eval_users))
    key = np.unique(row_of[cu] * (data.n_items + 1) + ci)  # one target per (user, item)
    targets = CSR.from_sorted_rows(key // (data.n_items + 1), key % (data.n_items + 1), len(eval_users))
    return ColdStartSplit(warm, split, EvalSet(eval_users, history, targets), cold_items)


class CategoryPopularity:
    """Score of an item = mean over its categories of the category's training
    interactions per (warm) item; items without a category score 0.

    Args:
        item_categories: per item ``1..n`` (list index ``i - 1``) a list of category strings.
    """

    def __init__(self, item_categories: Sequence[Sequence[str]]):
        self.item_categories = [list(c or []) for c in item_categories]

    def fit(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> "CategoryPopularity":
        counts = np.bincount(items, minlength=n_items + 1)
        inter: dict[str, float] = {}
        n_warm: dict[str, int] = {}
        for i, cats in enumerate(self.item_categories, start=1):
            for c in cats:
                inter[c] = inter.get(c, 0.0) + counts[i]
                n_warm[c] = n_warm.get(c, 0) + int(counts[i] > 0)
        per_item = {c: inter[c] / max(n_warm[c], 1) for c in inter}
        self.scores = np.zeros(n_items + 1, dtype=np.float32)
        for i, cats in enumerate(self.item_categories, start=1):
            if cats:
                self.scores[i] = float(np.mean([per_item[c] for c in cats]))
        self.n_items = n_items
        return self

    def score(self, users: np.ndarray, history: CSR) -> np.ndarray:
        return np.broadcast_to(self.scores, (len(users), self.n_items + 1))


def item_category_lists(data: PreparedData, column: str) -> list[list[str]]:
    """Categories of each item from a string or list<string> column of ``data.items``."""
    if column not in data.items.column_names:
        raise DataError(None, f"item column '{column}' not found (columns: {data.items.column_names})")
    col = data.items.column(column)
    if pa.types.is_list(col.type):
        return [list(v or []) for v in col.to_pylist()]
    return [[str(v)] if v is not None else [] for v in pc.cast(col, pa.string()).to_pylist()]


def evaluate_cold(score_fn: Callable, cs: ColdStartSplit, n_items: int, candidates: str = "cold",
                  ks: Sequence[int] = (10, 20), **kwargs: Any) -> dict[str, float]:
    """Exact ranking of the cold targets; ``candidates="cold"`` ranks among the
    withheld items only, ``"full"`` among the whole catalogue (history excluded)."""
    if candidates not in ("cold", "full"):
        raise ValueError(f"candidates must be 'cold' or 'full', got {candidates!r}")
    allowed = np.zeros(n_items + 1, dtype=bool)
    allowed[cs.cold_items] = True

    def restricted(users: np.ndarray, history: CSR):
        import torch

        s = score_fn(users, history)
        s = torch.as_tensor(np.array(s, dtype=np.float32) if isinstance(s, np.ndarray) else s).float().clone()
        if candidates == "cold":
            s[:, torch.as_tensor(~allowed, device=s.device)] = float("-inf")
        return s

    res = evaluate_ranking(restricted, cs.cold.users, cs.cold.history, cs.cold.targets, n_items, ks=ks,
                           exclude_history=True, **kwargs)
    return {**res.metrics, "n_users": res.n_users}

