"""Exploration policies of the decision service and their exact propensities.

A policy turns the service's final ordering of the candidates (after filters, the
ranker and diversity: the *greedy* slate is its first ``k`` items) into a random
slate, and gives for every shown item the probability that the policy shows that
item **at that position** given the request: the per-position *marginal*
``mu_j(a | x) = P(slate[j] = a | x)``. That is what ``recsys ope`` consumes:
:mod:`recsys.evaluation.ope` is position-wise (item-position model) and weights
the logged reward at position ``j`` by ``pi_j(a | x) / mu_j(a | x)``, which is
unbiased only when ``mu_j`` is the marginal (not the conditional given the items
above it).

Policies (``pool``: the random part draws from the first ``pool`` items of the
ordering, ``n = min(pool, len(ordering))``, at least ``k`` when available):

* ``none``: the greedy slate, propensity 1.0.
* ``epsilon_greedy``: with probability ``epsilon`` the whole slate is a uniformly
  random ordered sample of ``k`` of the ``n`` pool items, else the greedy slate.
  ``mu_j(a) = (1 - epsilon) 1[a = greedy_j] + epsilon / n``.
* ``topk_random_tail``: the first ``m = fixed`` positions are the greedy ones
  (propensity 1.0); positions ``m..k-1`` are a uniformly random ordered sample of
  the pool items ranked ``m..n-1``: ``mu_j(a) = 1 / (n - m)`` for ``j >= m``.
* ``softmax``: Plackett-Luce (sequential sampling without replacement) over the
  pool with weights ``w_a = max(exp((s_a - max s) / temperature), 1e-12)``
  (``s``: the level's scores, the ranker's P(click) on the personalised level;
  where a level has no scores, ``s = -log(1 + rank)``). Its marginal is the exact
  exponential-race formula: with ``T_a ~ Exp(w_a)`` independent the slate is the
  order of the ``T``s, so ``mu_j(a) = int_0^inf w_a e^{-w_a t} PB_{-a}(j; t) dt``
  where ``PB_{-a}(j; t)`` is the Poisson-binomial probability that exactly ``j``
  of the other pool items have ``T < t`` (success probabilities
  ``1 - e^{-w_b t}``). The integral is evaluated by the trapezoid rule in
  ``log t`` (step 0.1 over ``[-log w_a - 22, -log w_a + 4]``), which for this
  analytic, doubly-exponentially decaying integrand is accurate to ~3e-10 (the
  truncation below ``e^-22``; tested against full enumeration of the permutations).

**Mixture** (``mixture``: candidate bundle sets, ``mixture_share``: ``s``): the
service also computes the greedy slate ``c`` of each of the ``C`` candidates for the
request (through the same pipeline, from the same state); with probability ``s`` the
slate is a candidate's, chosen uniformly or with probability ``v_c`` (``mixture_weights``,
normalised), else the policy above draws it. The marginal is exact:
``mu_j(a) = (1 - s) base_j(a) + s * sum_c v_c [c_j = a]`` (``v_c = 1 / C`` when
uniform). This is exploration *toward* known challengers: every challenger's own
slate is shown with probability at least ``s v_c``, so each one's off-policy
estimate has support at every position (importance weight at most ``1 / (s v_c)``),
where a softmax around the champion rarely shows what a different retrieval model
would. Weights put more of that traffic where an estimate needs it (a variant worth
``v`` clicks per slate needs an effective sample size ``~ 1 / v`` for the same
relative error: docs/online_loop.md).

The draw of one decision is seeded by its ``decision_id``, so a logged decision can
be replayed.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

POLICIES = ("none", "epsilon_greedy", "softmax", "topk_random_tail")
MIN_WEIGHT = 1e-12
_H, _LO, _HI = 0.1, -22.0, 4.0  # trapezoid step and range in log(w_a t)


@dataclass
class Exploration:
    policy: str = "none"              # none | epsilon_greedy | softmax | topk_random_tail
    epsilon: float = 0.1              # epsilon_greedy: share of random slates
    temperature: float = 0.1          # softmax: temperature over the level's scores
    pool: int = 20                    # the random part draws from the first `pool` items of the ordering
    fixed: int = 1                    # topk_random_tail: leading positions kept greedy
    levels: list[str] | None = None   # levels explored (null: personalised only); others are deterministic
    mixture: dict[str, Any] | None = None  # candidate bundle sets (name -> serve.bundles overrides) served greedily
    mixture_share: float = 0.5        # with a mixture: probability the slate is a candidate's
    mixture_weights: dict[str, float] | None = None  # candidate name -> relative weight (every one; null: uniform)

    def check(self, where: str) -> str | None:
        """The first problem as one line naming the key, or None."""
        if self.mixture is not None:
            if not isinstance(self.mixture, Mapping) or not self.mixture:
                return f"{where}.mixture: expected a non-empty mapping name -> serve.bundles overrides"
            for name, ov in self.mixture.items():
                if not isinstance(ov, Mapping):
                    return f"{where}.mixture.{name}: expected a mapping of serve.bundles overrides"
            if not 0.0 < float(self.mixture_share) <= 1.0:
                return f"{where}.mixture_share: expected 0 < value <= 1"
            if self.mixture_weights is not None:
                w = self.mixture_weights
                if not isinstance(w, Mapping) or set(w) != set(self.mixture):
                    return (f"{where}.mixture_weights: expected a weight for every mixture candidate "
                            f"({', '.join(map(str, self.mixture))}), got {sorted(w) if isinstance(w, Mapping) else w!r}")
                bad = [n for n, v in w.items() if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0)]
                if bad:
                    return f"{where}.mixture_weights.{bad[0]}: expected a finite number > 0"
        elif self.mixture_weights is not None:
            return f"{where}.mixture_weights: given without a mixture"
        if self.policy not in POLICIES:
            return f"{where}.policy={self.policy!r}: expected one of {', '.join(POLICIES)}"
        if not 0.0 <= float(self.epsilon) <= 1.0:
            return f"{where}.epsilon: expected 0 <= value <= 1"
        if not float(self.temperature) > 0:
            return f"{where}.temperature: expected > 0"
        if not 1 <= int(self.pool) <= 200:
            return f"{where}.pool: expected 1..200"
        if int(self.fixed) < 0:
            return f"{where}.fixed: expected >= 0"
        return None

    def candidate_probs(self) -> np.ndarray:
        """P(candidate c | the slate is a mixture candidate's), in ``mixture`` order."""
        names = list(self.mixture or {})
        if self.mixture_weights is None:
            return np.full(len(names), 1.0 / max(len(names), 1))
        w = np.array([float(self.mixture_weights[n]) for n in names])
        return w / w.sum()

    @property
    def explored_levels(self) -> tuple[str, ...]:
        return tuple(self.levels) if self.levels is not None else ("personalised",)

    @property
    def active(self) -> bool:
        """Whether the slate is random at all (a base policy or a mixture)."""
        return self.policy != "none" or bool(self.mixture)

    @property
    def base(self) -> "Exploration":
        """The policy without its mixture."""
        return replace(self, mixture=None, mixture_weights=None) if self.mixture else self

    @property
    def name(self) -> str:
        """The ``logging_policy`` tag of the randomisation."""
        if self.mixture:
            weighted = ",weighted" if self.mixture_weights is not None else ""
            return (f"mixture(share={float(self.mixture_share):g},candidates={len(self.mixture)}{weighted})"
                    f"+{self.base.name}")
        if self.policy == "epsilon_greedy":
            return f"epsilon_greedy(eps={self.epsilon:g},pool={self.pool})"
        if self.policy == "softmax":
            return f"softmax(T={self.temperature:g},pool={self.pool})"
        if self.policy == "topk_random_tail":
            return f"topk_random_tail(fixed={self.fixed},pool={self.pool})"
        return "none"


def pool_weights(scores: Sequence[float | None], temperature: float) -> np.ndarray:
    """Plackett-Luce weights of the pool (max weight 1, floor :data:`MIN_WEIGHT`)."""
    if len(scores) and all(s is not None and np.isfinite(s) for s in scores):
        s = np.asarray(scores, dtype=np.float64)
    else:
        s = -np.log1p(np.arange(len(scores), dtype=np.float64))
    return np.maximum(np.exp((s - s.max()) / float(temperature)), MIN_WEIGHT) if len(s) else s


def pl_marginals(w: np.ndarray, k: int, items: np.ndarray | None = None) -> np.ndarray:
    """``M[r, j] = P(item items[r] is at position j)`` under Plackett-Luce with
    weights ``w`` (``(n,)``), for ``j < k`` (``items``: default all). Exact formula,
    trapezoid quadrature (see the module docstring)."""
    w = np.asarray(w, dtype=np.float64)
    n = len(w)
    items = np.arange(n) if items is None else np.asarray(items, dtype=np.int64)
    k = min(k, n)
    z = np.arange(_LO, _HI + _H / 2, _H)                      # log(w_a t)
    out = np.empty((len(items), k))
    for r, a in enumerate(items):
        t = np.exp(z) / w[a]                                  # (nodes,)
        f = w[a] * t * np.exp(-w[a] * t)                      # density of T_a times dt/dz
        others = np.delete(w, a)
        q = -np.expm1(-np.outer(others, t))                   # (n-1, nodes): P(T_b < t)
        pb = np.zeros((k, len(t)))
        pb[0] = 1.0
        for qb in q:                                          # Poisson-binomial, first k counts
            pb[1:] = pb[1:] * (1 - qb) + pb[:-1] * qb
            pb[0] *= 1 - qb
        out[r] = _H * (pb * f).sum(axis=1)
    return out


def _uniform_ordered(rng: np.random.Generator, n: int, k: int, size: int) -> np.ndarray:
    """``(size, k)`` uniformly random ordered samples without replacement from ``range(n)``."""
    return np.argsort(rng.random((size, n)), axis=1)[:, :k]


def sample(ex: Exploration, scores: Sequence[float | None], k: int, rng: np.random.Generator,
           size: int = 1) -> np.ndarray:
    """``(size, min(k, n))`` slates as indices into the ordering (0 = its first item).
    ``scores``: the scores of the ordering's first ``n`` (pool) items, in order."""
    n = len(scores)
    k = min(k, n)
    greedy = np.broadcast_to(np.arange(k), (size, k))
    if ex.policy == "none" or n == 0:
        return np.array(greedy)
    if ex.policy == "epsilon_greedy":
        rand = _uniform_ordered(rng, n, k, size)
        return np.where((rng.random(size) < ex.epsilon)[:, None], rand, greedy)
    if ex.policy == "topk_random_tail":
        m = min(int(ex.fixed), k)
        tail = m + _uniform_ordered(rng, n - m, k - m, size)
        return np.concatenate([greedy[:, :m], tail], axis=1)
    w = pool_weights(scores, ex.temperature)                  # softmax: Gumbel-top-k = Plackett-Luce
    keys = np.log(w) + rng.gumbel(size=(size, n))
    return np.argsort(-keys, axis=1, kind="stable")[:, :k]


def marginals(ex: Exploration, scores: Sequence[float | None], k: int,
              items: np.ndarray | None = None) -> np.ndarray:
    """``M[r, j]``: probability that the policy shows pool item ``items[r]`` (default
    all) at position ``j < min(k, n)``."""
    n = len(scores)
    k = min(k, n)
    items = np.arange(n) if items is None else np.asarray(items, dtype=np.int64)
    greedy = (items[:, None] == np.arange(k)[None, :]).astype(np.float64)
    if ex.policy == "none" or n == 0:
        return greedy
    if ex.policy == "epsilon_greedy":
        return (1 - ex.epsilon) * greedy + ex.epsilon / n
    if ex.policy == "topk_random_tail":
        m = min(int(ex.fixed), k)
        out = greedy.copy()
        out[:, m:] = np.where(items[:, None] >= m, 1.0 / max(n - m, 1), 0.0)
        return out
    return pl_marginals(pool_weights(scores, ex.temperature), k, items)


def explore(ex: Exploration, ordering: list[str], scores: dict[str, float | None], k: int,
            rng: np.random.Generator) -> tuple[list[str], list[float]]:
    """One random slate of at most ``k`` items from ``ordering`` and the marginal
    propensity of each shown item at its position."""
    if ex.policy == "none":
        return ordering[:k], [1.0] * min(k, len(ordering))
    n = min(max(int(ex.pool), k), len(ordering))
    pool = ordering[:n]
    s = [scores.get(i) for i in pool]
    idx = sample(ex, s, k, rng)[0]
    m = marginals(ex, s, k, idx)
    return [pool[i] for i in idx], [float(m[j, j]) for j in range(len(idx))]


def _pool(ex: Exploration, ordering: list[str], k: int) -> list[str]:
    return ordering[: min(max(int(ex.pool), k), len(ordering))] if ex.policy != "none" else ordering[:k]


def mixture_distribution(ex: Exploration, ordering: list[str], scores: dict[str, float | None], k: int,
                         candidates: Sequence[Sequence[str]]) -> tuple[list[str], np.ndarray]:
    """Every item the policy can show and ``M[r, j] = P(slate[j] = items[r])`` for
    ``j < k``: the base policy over ``ordering`` mixed with the candidates' greedy
    slates (share ``ex.mixture_share``; no candidates: the base policy alone)."""
    pool = _pool(ex, ordering, k)
    items = list(pool)
    at = {a: r for r, a in enumerate(items)}
    for c in candidates:
        for a in c[:k]:
            if a not in at:
                at[a] = len(items)
                items.append(a)
    out = np.zeros((len(items), k))
    base = marginals(ex.base, [scores.get(i) for i in pool], k)
    share = float(ex.mixture_share) if candidates else 0.0
    out[: len(pool), : base.shape[1]] = (1.0 - share) * base
    v = ex.candidate_probs() if candidates else np.zeros(0)
    for c, vc in zip(candidates, v):
        for j, a in enumerate(c[:k]):
            out[at[a], j] += share * vc
    return items, out


def explore_mixture(ex: Exploration, ordering: list[str], scores: dict[str, float | None], k: int,
                    candidates: Sequence[Sequence[str]], rng: np.random.Generator) -> tuple[list[str], list[float]]:
    """One slate of the mixture (see the module docstring) and the exact marginal
    propensity of each shown item at its position."""
    if not candidates:
        return explore(ex.base, ordering, scores, k, rng)
    share = float(ex.mixture_share)
    pool = _pool(ex, ordering, k)
    v = ex.candidate_probs()
    if rng.random() < share:  # uniform: the draw of the unweighted mixture (a logged decision replays the same)
        c = int(rng.integers(len(candidates))) if ex.mixture_weights is None else int(rng.choice(len(v), p=v))
        slate = list(candidates[c][:k])
    elif ex.policy == "none":
        slate = pool[:k]
    else:  # the base draw; its marginals are computed once, below, with the candidates' items
        slate = [pool[i] for i in sample(ex.base, [scores.get(i) for i in pool], k, rng)[0]]
    pos = {a: r for r, a in enumerate(pool)}
    in_pool = [pos[a] for a in slate if a in pos]
    base = marginals(ex.base, [scores.get(i) for i in pool], k, np.array(in_pool, dtype=np.int64)) \
        if in_pool else np.zeros((0, k))
    row = {a: base[r] for r, a in enumerate(a for a in slate if a in pos)}
    props = []
    for j, a in enumerate(slate):
        b = float(row[a][j]) if a in row and j < len(row[a]) else 0.0
        props.append((1.0 - share) * b + share * sum(vc for c, vc in zip(candidates, v) if j < len(c) and c[j] == a))
    return slate, props
