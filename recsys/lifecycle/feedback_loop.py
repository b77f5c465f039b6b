"""Feedback-loop simulation in the synthetic world: serve -> log -> retrain on the
logs -> redeploy, cycle after cycle, with the metrics that show a loop closing
(exposure concentration, catalogue coverage, per-user diversity, true CTR) and
three mitigations that can be switched on.

The loop (numpy only, seeded; ``world`` is a
:class:`recsys.data.synthetic.SyntheticWorld`):

* **model**: EASE (closed form, ``B = I - P / diag(P)``, ``P = (X^T X + l2 I)^-1``)
  on a *weighted* user x item matrix ``X``: every consumed item of the world's
  clickstream (``click`` events) counts 1, every logged click of the simulation
  adds its retraining weight. Scores of a user are ``X[u] @ B``; the user's
  initially consumed items are never recommended (logged clicks may be shown again:
  the world's click probabilities do not change with exposure).
* **serve** (one request per user per cycle): the top ``slate_size`` items by score;
  with the **exposure re-ranker** on, the top ``rerank_candidates`` are re-ranked by
  :func:`recsys.policies.exposure.exposure_rerank` at item level (its exposure state
  carries over all cycles). With **exploration** ``epsilon > 0``, each position is,
  independently with probability ``epsilon``, replaced by an item drawn uniformly
  from the items not in the slate (distinct within the slate); the logged
  propensity is the exact per-position marginal: ``1 - epsilon`` for the slate's
  own item, ``epsilon / (n_items - slate_size)`` for an explored one.
* **log**: a click is drawn per position with the world's true
  ``click_probability(user, item, position)``; (user, item, position, propensity,
  click) is logged.
* **retrain**: the model is refit from scratch on the initial data plus every click
  logged so far. Each logged click weighs ``log_weight``; with **propensity-weighted
  retraining** it weighs ``log_weight * min(1 / propensity, max_weight)``
  (inverse-propensity weights, clipped), rescaled per cycle so that the cycle's
  clicks keep their total weight (only their distribution over items changes).

Per cycle (of the lists actually served, exploration included):

* ``gini``: Gini of the position-discounted exposure (``1 / log2(2 + pos)``) over
  all catalogue items (items never shown count as 0);
* ``coverage``: share of catalogue items shown at least once in the cycle;
* ``diversity``: mean over users of the intra-list category diversity (share of
  pairs of a user's list in different categories);
* ``true_ctr``: expected clicks per impression, the mean of the world's true
  ``click_probability`` over every served (user, item, position) -- not the sampled
  clicks; ``clicks`` and ``sampled_ctr`` are the sampled ones.

:func:`compare_arms` runs the loop without and with mitigation on the same world,
requests and random numbers and reports ``gini_rise_cut = 1 - rise(mitigated) /
rise(baseline)`` with ``rise = gini[last cycle] - gini[first cycle]`` of each arm
(its own start: the immediate drop that a mitigation gives in cycle 1 is not
counted as a cut), and ``ctr_cost = 1 - mean true CTR (mitigated) / mean true CTR
(baseline)`` over all cycles.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys.evaluation.beyond import intra_list_diversity_categories
from recsys.evaluation.fairness import gini, item_exposure
from recsys.policies.exposure import exposure_rerank
from recsys.utils.io import atomic_path, write_json_atomic

METRICS = ("gini", "coverage", "diversity", "true_ctr")


@dataclass
class Mitigation:
    """Which mitigations are on (all off = the plain loop)."""

    epsilon: float = 0.0  # exploration: share of positions replaced by a uniform non-slate item
    propensity_weighting: bool = False  # retrain with clipped 1/propensity weights
    max_weight: float = 20.0  # clip of the inverse-propensity weights
    rerank_weight: float = 0.0  # exposure re-ranker strength (0 = off)
    rerank_candidates: int = 50  # candidates per list given to the re-ranker

    def __post_init__(self) -> None:
        checks = {"0 <= epsilon < 1": 0.0 <= self.epsilon < 1.0, "max_weight >= 1": self.max_weight >= 1.0,
                  "rerank_weight >= 0": self.rerank_weight >= 0.0, "rerank_candidates >= 1": self.rerank_candidates >= 1}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"mitigation: need {', '.join(bad)}")

    @property
    def active(self) -> bool:
        return self.epsilon > 0 or self.propensity_weighting or self.rerank_weight > 0


@dataclass
class LoopConfig:
    """The loop itself: number of cycles, the model, the weight of logged clicks."""

    n_cycles: int = 10
    l2: float = 200.0  # EASE regularisation
    log_weight: float = 1.0  # weight of one logged click relative to one consumed item
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {"n_cycles >= 1": self.n_cycles >= 1, "l2 > 0": self.l2 > 0, "log_weight > 0": self.log_weight > 0,
                  "seed >= 0": self.seed >= 0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"loop: need {', '.join(bad)}")


# ------------------------------------------------------------------ pieces
def ease_fit(x: np.ndarray, l2: float) -> np.ndarray:
    """EASE item-item weights of a (weighted) user x item matrix ``x`` (U, n_items + 1;
    column 0 = padding): (n_items + 1, n_items + 1), diagonal and row/column 0 zero."""
    _, m = x.shape
    xi = x[:, 1:]
    gram = xi.T @ xi
    gram[np.diag_indices_from(gram)] += l2
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    b[np.diag_indices_from(b)] = 0.0
    out = np.zeros((m, m))
    out[1:, 1:] = b
    return out


def top_slates(scores: np.ndarray, k: int) -> np.ndarray:
    """Best ``k`` valid items per row, best first (ties: lower id): (U, k)."""
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.lexsort((part, -np.take_along_axis(scores, part, axis=1)), axis=1)
    return np.take_along_axis(part, order, axis=1)


def explore(slates: np.ndarray, n_items: int, epsilon: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Epsilon exploration per position with exact per-position propensities.

    Each position is replaced, independently with probability ``epsilon``, by an
    item uniform over the items not in the row's slate (replacements are distinct
    within a row). Returns ``(served (U, K), propensity (U, K))``."""
    n_rows, k = slates.shape
    if epsilon <= 0:
        return slates.copy(), np.ones(slates.shape)
    keys = rng.random((n_rows, n_items + 1))
    keys[:, 0] = np.inf
    np.put_along_axis(keys, slates, np.inf, axis=1)
    pool = np.argpartition(keys, k - 1, axis=1)[:, :k]  # k distinct random non-slate items per row
    pool = pool[np.arange(n_rows)[:, None], np.argsort(np.take_along_axis(keys, pool, axis=1), axis=1)]
    flip = rng.random((n_rows, k)) < epsilon
    served = np.where(flip, pool, slates)
    prop = np.where(flip, epsilon / (n_items - k), 1.0 - epsilon)
    return served, prop


def cycle_metrics(world: Any, users: np.ndarray, served: np.ndarray, item_category: np.ndarray) -> dict[str, float]:
    """The four loop metrics of one cycle's served lists ``served`` (U, K) for ``users`` (U,)."""
    n_items = world.config.n_items
    exp = item_exposure(served, n_items)[1:]
    shown = np.zeros(n_items + 1, dtype=bool)
    shown[served.ravel()] = True
    pos = np.arange(served.shape[1])[None, :]
    p_click = world.click_probability(users[:, None], served, pos)  # (U, K)
    return {"gini": gini(exp), "coverage": float(shown[1:].mean()),
            "diversity": intra_list_diversity_categories(served, item_category),
            "true_ctr": float(p_click.mean())}


# ------------------------------------------------------------------ the loop
def initial_matrix(world: Any) -> np.ndarray:
    """Users x items (n_users + 1, n_items + 1) of the world's consumed items (``click`` events), 0/1."""
    ev = world.events
    kind = ev.column("event_type").to_numpy(zero_copy_only=False)
    keep = kind == "click"
    u = np.asarray(ev.column("user_id").to_numpy(zero_copy_only=False)[keep], dtype=np.int64)
    j = np.asarray(ev.column("item_id").to_numpy(zero_copy_only=False)[keep], dtype=np.int64)
    x = np.zeros((world.config.n_users + 1, world.config.n_items + 1))
    x[u, j] = 1.0
    return x


def run_loop(world: Any, loop: LoopConfig, mitigation: Mitigation, *, x0: np.ndarray | None = None,
             keep_lists: bool = False) -> dict[str, Any]:
    """Run ``loop.n_cycles`` cycles; returns ``{"cycles": [per-cycle metrics], "mitigation", "loop", "timings"}``
    (``keep_lists``: also ``"served"``, the (n_users, K) lists of every cycle; user ``u`` is row ``u - 1``).

    The random numbers (click draws, exploration) come from streams seeded by
    ``(seed, cycle)``, so two arms see the same draws where they serve the same lists.
    """
    t_start = time.perf_counter()
    cfg = world.config
    n_users, n_items, k = cfg.n_users, cfg.n_items, cfg.slate_size
    if mitigation.rerank_weight > 0 and mitigation.rerank_candidates < k:
        raise ValueError(f"mitigation: rerank_candidates ({mitigation.rerank_candidates}) must be >= the slate size {k}")
    if n_items - k < k:
        raise ValueError(f"world: need n_items >= 2 * slate_size for exploration, got {n_items}, {k}")
    base = initial_matrix(world) if x0 is None else x0
    consumed = base > 0
    consumed[:, 0] = True
    logged = np.zeros_like(base)
    users = np.arange(1, n_users + 1)
    category = np.asarray(world.truth["item_category"], dtype=np.int64)
    state: np.ndarray | None = None
    rows: list[dict[str, Any]] = []
    lists: list[np.ndarray] = []
    fit_s = serve_s = 0.0
    for c in range(loop.n_cycles):
        t0 = time.perf_counter()
        x = base + logged
        b = ease_fit(x, loop.l2)
        fit_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = x[users] @ b
        scores[consumed[users]] = -np.inf
        if mitigation.rerank_weight > 0:
            cand = top_slates(scores, mitigation.rerank_candidates)
            slates, state = exposure_rerank(cand, np.take_along_axis(scores, cand, axis=1), k,
                                            weight=mitigation.rerank_weight, state=state if state is not None
                                            else np.zeros(n_items + 1))
        else:
            slates = top_slates(scores, k)
        rng = np.random.default_rng([loop.seed, c])
        explore_rng, click_rng = rng.spawn(2)
        served, prop = explore(slates, n_items, mitigation.epsilon, explore_rng)
        p_click = world.click_probability(users[:, None], served, np.arange(k)[None, :])
        clicks = click_rng.random(p_click.shape) < p_click
        serve_s += time.perf_counter() - t0
        row = {"cycle": c + 1, **cycle_metrics(world, users, served, category),
               "clicks": int(clicks.sum()), "sampled_ctr": float(clicks.mean()),
               "explored_share": float((prop < 1.0 - mitigation.epsilon).mean()) if mitigation.epsilon else 0.0}
        rows.append(row)
        if keep_lists:
            lists.append(served)
        # retrain input: this cycle's clicks, weighted
        w = np.full(p_click.shape, loop.log_weight)
        if mitigation.propensity_weighting:
            ipw = np.minimum(1.0 / prop, mitigation.max_weight)
            if clicks.any():
                ipw *= clicks.sum() / ipw[clicks].sum()
            w = w * ipw
        uu = np.broadcast_to(users[:, None], served.shape)
        np.add.at(logged, (uu[clicks], served[clicks]), w[clicks])
    out = {"cycles": rows, "mitigation": asdict(mitigation), "loop": asdict(loop),
           "timings": {"fit_s": fit_s, "serve_s": serve_s, "total_s": time.perf_counter() - t_start}}
    if keep_lists:
        out["served"] = lists
    return out


def gini_rise(cycles: list[dict[str, Any]]) -> float:
    return float(cycles[-1]["gini"] - cycles[0]["gini"])


def compare_arms(world: Any, loop: LoopConfig, mitigation: Mitigation, *, min_rise_cut: float = 0.5,
                 max_ctr_cost: float = 0.05) -> dict[str, Any]:
    """Baseline (no mitigation) and mitigated loops on the same world and seeds.

    Returns ``{"baseline", "mitigated"}`` (each :func:`run_loop`'s result) and
    ``gini_rise`` of each, ``gini_rise_cut``, ``ctr_cost``, ``goal`` (the targets)
    and ``goal_met`` (``gini_rise_cut >= min_rise_cut and ctr_cost < max_ctr_cost``)."""
    if not mitigation.active:
        raise ValueError("mitigation: every mitigation is off (set epsilon, propensity_weighting or rerank_weight)")
    x0 = initial_matrix(world)
    base = run_loop(world, loop, Mitigation(), x0=x0)
    mit = run_loop(world, loop, mitigation, x0=x0)
    rise_b, rise_m = gini_rise(base["cycles"]), gini_rise(mit["cycles"])
    ctr_b = float(np.mean([r["true_ctr"] for r in base["cycles"]]))
    ctr_m = float(np.mean([r["true_ctr"] for r in mit["cycles"]]))
    cut = 1.0 - rise_m / rise_b if rise_b > 0 else float("nan")
    cost = 1.0 - ctr_m / ctr_b
    return {"baseline": base, "mitigated": mit, "gini_rise": {"baseline": rise_b, "mitigated": rise_m},
            "mean_true_ctr": {"baseline": ctr_b, "mitigated": ctr_m}, "gini_rise_cut": cut, "ctr_cost": cost,
            "goal": {"min_gini_rise_cut": min_rise_cut, "max_ctr_cost": max_ctr_cost},
            "goal_met": bool(np.isfinite(cut) and cut >= min_rise_cut and cost < max_ctr_cost)}


# ------------------------------------------------------------------ output
def per_cycle_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per cycle with both arms side by side (``<metric>/baseline``, ``<metric>/mitigated``)."""
    out = []
    for rb, rm in zip(result["baseline"]["cycles"], result["mitigated"]["cycles"]):
        row: dict[str, Any] = {"cycle": rb["cycle"]}
        for m in METRICS:
            row[f"{m}/baseline"], row[f"{m}/mitigated"] = rb[m], rm[m]
        out.append(row)
    return out


def format_table(result: dict[str, Any]) -> str:
    rows = per_cycle_table(result)
    head = ["cycle"] + [f"{m}/{a}" for m in METRICS for a in ("baseline", "mitigated")]
    lines = ["  ".join(f"{h:>18}" if i else f"{h:>5}" for i, h in enumerate(head))]
    for r in rows:
        lines.append("  ".join([f"{r['cycle']:>5}"] + [f"{r[h]:>18.4f}" for h in head[1:]]))
    return "\n".join(lines)


def plot_curves(result: dict[str, Any], path: str | Path) -> Path:
    """PNG with exposure Gini and true CTR per cycle, with vs without mitigation (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, metric, title in zip(axes, ("gini", "true_ctr", "coverage"),
                                 ("exposure Gini over items", "true CTR (expected clicks / impression)",
                                  "catalogue coverage")):
        for arm, style in (("baseline", "o-"), ("mitigated", "s--")):
            cyc = result[arm]["cycles"]
            ax.plot([r["cycle"] for r in cyc], [r[metric] for r in cyc], style, label=arm)
        ax.set_xlabel("cycle")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"feedback loop: Gini rise cut {result['gini_rise_cut']:.1%}, true-CTR cost {result['ctr_cost']:.2%}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def write_results(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``feedback_loop.json`` (everything) and ``feedback_loop.png`` in ``out_dir``."""
    out = Path(out_dir)
    js = out / "feedback_loop.json"
    write_json_atomic(js, {**result, "table": per_cycle_table(result)})
    return {"json": js, "png": plot_curves(result, out / "feedback_loop.png")}
