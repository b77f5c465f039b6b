"""Evaluation policies on an OPE setup: the ``_target_`` of every ``configs/policy/*.yaml``.

Each builder takes the runtime arguments first (the :class:`Setup`, a seed) and
the config's options as keywords, so a config instantiated with ``_partial_: true``
is a ``make(setup, seed) -> policy``; a nested ``model`` config arrives as an
unfitted model and is fitted here on the setup's training split. Learning
policies (bandits: they have ``update``) start untrained; :func:`build_policy`
warms one up and freezes it before it is evaluated.

Example::

    make = functools.partial(model_policy, model=MarkovChain(), mode="softmax", temperature=0.5)
    pol, info = build_policy(setup, make, seed=0)
    pol.probs(setup.log.users[:4])  # (4, K, M)
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from recsys.ope.setup import Setup, fit_model, model_scores, user_features
from recsys.policies import BernoulliTS, EpsilonGreedy, LinearTS, LinUCB, ScorePolicy, UniformPolicy, simulate
from recsys.policies.simulation import relevance_all
from recsys.utils.errors import RecsysError

PolicyFactory = Callable[[Setup, int], Any]


def model_policy(s: Setup, seed: int, model: Any, mode: str = "topk", temperature: float = 1.0) -> ScorePolicy:
    """A model's scores as a slate policy: top-k (``mode="topk"``) or per-position softmax."""
    return ScorePolicy(model_scores(fit_model(model, s), s), s.n_actions, s.slate_size, mode, temperature)


def epsilon_greedy(s: Setup, seed: int, model: Any, epsilon: float = 0.1) -> EpsilonGreedy:
    """The model's per-position top-k with probability ``1 - epsilon``, else uniform."""
    return EpsilonGreedy(model_scores(fit_model(model, s), s), s.n_actions, s.slate_size, epsilon)


def uniform(s: Setup, seed: int) -> UniformPolicy:
    """Every action of the setup's action set (the log's items, the catalogue file's, or
    ``data=``'s) equally likely at every position."""
    return UniformPolicy(s.n_actions, s.slate_size)


def renamed(s: Setup, seed: int, old: str, message: str) -> Any:
    """A policy name that was retired: refuse it with what to use instead."""
    raise RecsysError(f"policy={old} is no longer a policy name: {message}")


class TablePolicy:
    """Per-context action probabilities read from a table (:func:`probability_table`).

    ``probs(contexts)`` takes the log's context indices (``takes_contexts``)."""

    takes_contexts = True

    def __init__(self, dist: np.ndarray, group_of_context: np.ndarray):
        self.dist, self.group = dist, group_of_context  # (G, K or 1, M), (n_contexts + 1,)

    def probs(self, contexts: np.ndarray) -> np.ndarray:
        return self.dist[self.group[np.asarray(contexts, dtype=np.int64)]]


def probability_table(s: Setup, seed: int, path: str | None = None, tolerance: float = 1e-6) -> TablePolicy:
    """A target policy given as a table of action probabilities (Parquet or CSV).

    Columns: ``item_id``, ``probability``, and key columns naming fields of the log's
    context (``user_id``, the declared ``logs_options.context_columns``, and
    ``position``, numbered like the log's positions: per-position distributions in a
    slate log, a context in a one-impression-per-row log). The probabilities of each key
    (and position) must sum to 1 within ``tolerance``; every item must be in the
    setup's action set and every context of the log must have a row: anything else is
    refused in one line naming the file, row and column.
    """
    from recsys.data.bandit_logs import _numeric, _strings, read_table
    from recsys.utils.errors import DataError

    if not path:
        raise RecsysError("policy=table needs policy.path=<probability table .parquet|.csv>")
    table, csv = read_table(path)
    log = s.log
    fields = list(log.context_table) + ([] if log.row_rounds else ["position"])
    for need in ("item_id", "probability"):
        if need not in table.column_names:
            raise DataError(path, f"column not found; a probability table has item_id, probability and key "
                            f"columns among {fields}", column=need)
    keys = [c for c in table.column_names if c not in ("item_id", "probability")]
    for c in keys:
        if c not in fields:
            raise DataError(path, f"not a context field of the log (key columns must be among {fields}; declare "
                            f"extra context columns in logs_options.context_columns)", column=c)
    prob = _numeric(table, "probability", path, csv)
    bad = np.flatnonzero(~(np.isfinite(prob) & (prob >= 0) & (prob <= 1)))
    if len(bad):
        i = int(bad[0])
        raise DataError(path, f"{'line' if csv else 'row'} {i + 2 if csv else i}: probability must be in [0, 1], "
                        f"got {prob[i]}", column="probability")
    items = _strings(table, "item_id", path, csv)
    col_of = {str(x): j for j, x in enumerate(log.item_ids) if j > 0}
    cols = np.array([col_of.get(str(x), -1) for x in items], dtype=np.int64)
    if (cols < 0).any():
        i = int(np.flatnonzero(cols < 0)[0])
        raise DataError(path, f"{'line' if csv else 'row'} {i + 2 if csv else i}: item {items[i]!r} is not in the "
                        f"action set ({s.catalogue}); the policy's support must be within the log's actions",
                        column="item_id")
    k_table = log.slate_size if ("position" in keys and not log.row_rounds) else 1
    slot = np.zeros(len(items), dtype=np.int64)
    key_vals = []
    for c in keys:
        if c == "position":
            p = _numeric(table, c, path, csv)
            if not np.all(np.isfinite(p) & (p == np.round(p))):
                raise DataError(path, "position must be an integer", column=c)
            p = p.astype(np.int64) - log.position_base
            if not log.row_rounds:
                if ((p < 0) | (p >= log.slate_size)).any():
                    i = int(np.flatnonzero((p < 0) | (p >= log.slate_size))[0])
                    raise DataError(path, f"position {p[i] + log.position_base} outside the log's slate", column=c)
                slot = p
                continue
            key_vals.append(p.astype(str).astype(object))
        else:
            key_vals.append(_strings(table, c, path, csv))
    tkeys = np.array(["\x1f".join(map(str, t)) for t in zip(*key_vals)] if key_vals else [""] * len(items),
                      dtype=object)
    groups, g = np.unique(tkeys, return_inverse=True)
    g = np.ravel(g)
    sums = np.zeros((len(groups), k_table))
    np.add.at(sums, (g, slot), prob)
    off = np.argwhere(np.abs(sums - 1.0) > tolerance)
    if len(off):
        gi, ki = off[0]
        where = ", ".join(f"{c}={v}" for c, v in zip([c for c in keys if c != "position" or log.row_rounds],
                                                       str(groups[gi]).split("\x1f"))) or "all contexts"
        pos = f" position {ki + log.position_base}" if k_table > 1 else ""
        raise DataError(path, f"probabilities of {where}{pos} sum to {sums[gi, ki]:.6g}, not 1 "
                        f"(tolerance {tolerance:g})", column="probability")
    dist = np.zeros((len(groups), k_table, s.n_actions))
    np.add.at(dist, (g, slot, cols), prob)
    # each log context -> its table group
    ctx_fields = [c for c in keys if c != "position" or log.row_rounds]
    ctx_keys = np.array(["\x1f".join(map(str, t)) for t in zip(*(log.context_table[c] for c in ctx_fields))]
                        if ctx_fields else [""] * (log.n_contexts + 1), dtype=object)
    pos_in = np.searchsorted(groups, ctx_keys)
    pos_in = np.minimum(pos_in, len(groups) - 1)
    found = groups[pos_in] == ctx_keys
    found[0] = True
    if not found.all():
        c = int(np.flatnonzero(~found)[0])
        desc = ", ".join(f"{f}={log.context_table[f][c]}" for f in ctx_fields)
        raise DataError(path, f"no rows for the log's context {desc} (and {int((~found).sum()) - 1} more); "
                        f"a probability table must cover every context of the log", column=ctx_fields[0])
    return TablePolicy(dist, np.where(found, pos_in, 0))


class _OnUsers:
    """A user-keyed policy on a log whose contexts are finer than users: context -> its user."""

    takes_contexts = True

    def __init__(self, policy: Any, context_users: np.ndarray):
        self.policy, self.context_users = policy, context_users

    def probs(self, contexts: np.ndarray) -> np.ndarray:
        return self.policy.probs(self.context_users[np.asarray(contexts, dtype=np.int64)])


def oracle_softmax(s: Setup, seed: int, temperature: float = 0.5) -> ScorePolicy:
    """Softmax over the synthetic world's true relevance logits (needs the world's own log)."""
    if s.world is None:
        raise RecsysError("policy=oracle_softmax needs the synthetic world (no logs=)")
    m = s.n_actions
    rel_logit = lambda u: np.log(np.maximum(relevance_all(s.world, u, m), 1e-12))  # noqa: E731
    return ScorePolicy(rel_logit, m, s.slate_size, "softmax", temperature)


def _examination(s: Setup) -> np.ndarray | None:
    return s.world.truth["position_bias"] if s.world is not None else None


def linucb(s: Setup, seed: int, alpha: float = 1.0, l2: float = 1.0) -> LinUCB:
    """Disjoint LinUCB on one-hot user side features."""
    return LinUCB(user_features(s), s.n_actions, s.slate_size, alpha, l2, _examination(s))


def linear_ts(s: Setup, seed: int, v: float = 0.5, l2: float = 1.0, n_samples: int = 64) -> LinearTS:
    """Linear Thompson sampling; per-position distribution by seeded Monte Carlo."""
    return LinearTS(user_features(s), s.n_actions, s.slate_size, v, l2, _examination(s), n_samples, seed)


def bernoulli_ts(s: Setup, seed: int, n_samples: int = 256) -> BernoulliTS:
    """Context-free Beta-Bernoulli Thompson sampling; MC distribution (seeded)."""
    return BernoulliTS(s.n_actions, s.slate_size, examination=_examination(s), n_samples=n_samples, seed=seed)


def build_policy(s: Setup, make: PolicyFactory, seed: int, warmup_requests: int = 5000,
                 warmup_batch_size: int = 200) -> tuple[Any, dict[str, Any]]:
    """``make(s, seed)``; a learning policy is then trained and frozen: online in the
    synthetic world for ``warmup_requests`` requests (users drawn from the log), or,
    for a file log, on the first half of the log (then evaluated on the rest).

    Returns the policy and what was done (``warmup_regret_per_request`` or
    ``trained_on_requests``; empty for a policy that does not learn)."""
    pol = make(s, seed)
    info: dict[str, Any] = {}
    if not hasattr(pol, "update"):
        if s.fit_requests is not None and isinstance(pol, (ScorePolicy, EpsilonGreedy)):
            info["trained_on_requests"] = s.fit_requests  # fitted on the log's first rounds
        return _on_contexts(s, pol), info
    if s.world is not None:  # warm up online in the world, then freeze
        rng = np.random.default_rng(seed)
        warm_users = rng.choice(s.log.users, warmup_requests)
        sim = simulate(pol, s.world, warm_users, s.n_actions, s.slate_size, batch_size=warmup_batch_size, seed=seed)
        info["warmup_regret_per_request"] = float(sim.regret.mean())
    else:  # learn from the first half of the log, evaluate on the rest
        half = s.log.n_requests // 2
        for st in range(0, half, warmup_batch_size):
            sl = slice(st, min(st + warmup_batch_size, half))
            pol.update(s.log.users[sl], s.log.actions[sl], s.log.rewards[sl])
        info["trained_on_requests"] = half
    return _on_contexts(s, pol), info


def _on_contexts(s: Setup, pol: Any) -> Any:
    if s.log.contexts_are_users or getattr(pol, "takes_contexts", False):
        return pol
    assert s.log.context_users is not None
    return _OnUsers(pol, s.log.context_users)
