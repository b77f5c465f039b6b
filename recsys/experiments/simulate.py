"""Synthetic A/B experiments with known true lifts, in the exposure Parquet format.

Each user ``u`` has a latent engagement ``L_u ~ N(0, 1)`` that drives both periods:

* baseline CTR ``p_u = sigmoid(logit(baseline_ctr) + ctr_spread * L_u)``, or, from a
  :class:`~recsys.data.synthetic.SyntheticWorld`, the user's mean true relevance
  over the catalogue (``L_u`` is then the standardised logit of that);
* ``pre_ctr``: clicks / ``pre_impressions`` in the pre-period (Binomial), the CUPED
  covariate of ``click``;
* ``click`` (binary, experiment period): ``Bernoulli(min(1, p_u * (1 + lift[arm])))``;
* ``pre_revenue`` / ``revenue`` (continuous): ``revenue_mean * exp(sigma z - sigma^2/2)``
  with ``z = sqrt(r) L_u + sqrt(1 - r) e`` (fresh ``e`` per period, ``r =
  correlation``), times ``1 + lift[arm]`` in the experiment period;
* ``timestamp``: first exposure, uniform over ``duration_days``.

Arms come from the real hash assignment (:func:`~recsys.experiments.assignment.assign`),
so the file also exercises the assignment check of the analysis.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np
import pyarrow as pa

from recsys.experiments.assignment import HOLDBACK, NOT_IN_EXPERIMENT, ExperimentDesign, assign


@dataclass(frozen=True)
class SimulationSpec:
    """Args:
        n_users: eligible users (ids ``u1..uN``, or the world's ``1..n_users``);
            only those the design puts into an arm become rows.
        lifts: arm -> true relative lift of every metric (missing arms: 0).
        baseline_ctr, ctr_spread: population CTR and its spread on the logit scale.
        pre_impressions: impressions per user in the pre-period (for ``pre_ctr``).
        revenue_mean, revenue_sigma: control revenue per user (lognormal).
        correlation: latent correlation of the two periods' revenue.
        duration_days, start_time: exposure times.
        seed: everything is deterministic given the seed (and the design's salt).
    """

    n_users: int = 20_000
    lifts: Mapping[str, float] = field(default_factory=lambda: {"treatment": 0.05})
    baseline_ctr: float = 0.05
    ctr_spread: float = 0.8
    pre_impressions: int = 20
    revenue_mean: float = 2.0
    revenue_sigma: float = 0.8
    correlation: float = 0.7
    duration_days: float = 14.0
    start_time: float = 1_700_000_000.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_users < 1 or not 0 < self.baseline_ctr < 1 or not 0 <= self.correlation <= 1:
            raise ValueError(f"bad simulation spec: {self}")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["lifts"] = dict(self.lifts)
        return out


def lognormal_metric(rng: np.random.Generator, latent: np.ndarray, mean: float, sigma: float, correlation: float,
                     ) -> np.ndarray:
    """``mean * exp(sigma z - sigma^2 / 2)``, ``z = sqrt(r) latent + sqrt(1 - r) noise``;
    ``E = mean`` for standard normal ``latent``. Broadcasts over ``latent``'s shape."""
    z = np.sqrt(correlation) * latent + np.sqrt(1.0 - correlation) * rng.standard_normal(np.shape(latent))
    return mean * np.exp(sigma * z - sigma ** 2 / 2)


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    return np.log(p / (1 - p))


def world_ctr(world: Any, users: np.ndarray, block: int = 256) -> np.ndarray:
    """Mean true relevance of each user (int ids) over all items of a SyntheticWorld."""
    items = np.arange(1, world.config.n_items + 1)
    out = np.empty(len(users))
    for s in range(0, len(users), block):
        out[s:s + block] = world.relevance(users[s:s + block, None], items[None, :]).mean(axis=1)
    return out


def simulate_experiment(design: ExperimentDesign, spec: SimulationSpec = SimulationSpec(),
                        world: Any | None = None) -> pa.Table:
    """One synthetic experiment as a table in the exposure format (columns
    ``user_id, arm, timestamp, click, pre_ctr, revenue, pre_revenue``)."""
    rng = np.random.default_rng(spec.seed)
    if world is not None:
        n = min(spec.n_users, world.config.n_users)
        raw = np.arange(1, n + 1)
        ids = raw.astype(str)
        p = np.clip(world_ctr(world, raw), 1e-6, 1 - 1e-6)
        lg = _logit(p)
        latent = (lg - lg.mean()) / (lg.std() if lg.std() > 0 else 1.0)
    else:
        n = spec.n_users
        ids = np.char.add("u", np.arange(1, n + 1).astype(str))
        latent = rng.standard_normal(n)
        p = 1.0 / (1.0 + np.exp(-(_logit(spec.baseline_ctr) + spec.ctr_spread * latent)))
    arm = assign(ids, design)
    keep = (arm != NOT_IN_EXPERIMENT) & (arm != HOLDBACK)
    ids, arm, latent, p = ids[keep], arm[keep], latent[keep], p[keep]
    m = len(ids)
    arm_lift = np.zeros(m)
    for a in design.arms:
        arm_lift[arm == a] = float(spec.lifts.get(a, 0.0))
    pre_ctr = rng.binomial(spec.pre_impressions, p) / spec.pre_impressions
    click = (rng.random(m) < np.minimum(1.0, p * (1.0 + arm_lift))).astype(np.int8)
    pre_rev = lognormal_metric(rng, latent, spec.revenue_mean, spec.revenue_sigma, spec.correlation)
    rev = lognormal_metric(rng, latent, spec.revenue_mean, spec.revenue_sigma, spec.correlation) * (1.0 + arm_lift)
    ts = spec.start_time + np.sort(rng.random(m)) * spec.duration_days * 86400.0
    ts = ts[rng.permutation(m)]
    return pa.table({
        "user_id": pa.array(ids.tolist(), pa.string()),
        "arm": pa.array(arm.tolist(), pa.string()),
        "timestamp": pa.array(ts, pa.float64()),
        "click": pa.array(click, pa.int8()),
        "pre_ctr": pa.array(pre_ctr, pa.float64()),
        "revenue": pa.array(rev, pa.float64()),
        "pre_revenue": pa.array(pre_rev, pa.float64()),
    })


DEFAULT_METRICS = {"click": {"column": "click", "covariate": "pre_ctr", "type": "binary"},
                   "revenue": {"column": "revenue", "covariate": "pre_revenue", "type": "continuous"}}
