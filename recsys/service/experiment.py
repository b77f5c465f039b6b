"""Canary and A/B routing of the decision service, with guardrails and automatic rollback.

**Assignment** reuses :func:`recsys.experiments.assignment.assign` (three
independent sha256 hashes of the user id: holdback, exposure, arm), so it is
sticky per user, identical in every worker and replica, and checkable offline
(``recsys ab analyze`` recomputes it from the salt; the decision log's ``arm``
column gives the counts for an SRM test). In order:

1. a request whose context does not match ``experiment.eligible`` (e.g.
   ``{segment: [low_risk]}``: only low-risk users may see a challenger first) is
   arm ``default``: the champion's bundles with ``serve.exploration``;
2. the global **holdback** (``holdback.share`` of all users by ``holdback.salt``)
   is arm ``holdback``: ``serve: champion`` gives the champion's bundles without
   exploration (propensity 1.0), ``serve: non_personalised`` the fallback chain
   without the personalised level;
3. ``traffic`` is the **ramp**: that share of the remaining users is in the
   experiment (raising it only adds users; nobody in an arm moves), the others
   are ``default``;
4. inside, the arm hash splits users by the arms' relative ``weight``. The
   control arm (the first, or ``control``) serves the champion (``serve.bundles``);
   a challenger serves ``serve.bundles`` overridden by its ``bundles``, with its own
   ``exploration`` when given.

A challenger that was **rolled back** serves its users as ``default`` from then on
(they stay assigned to it: restoring it brings the same users back).

**Guardrails** (:func:`evaluate`, checked every ``check_every`` decisions of a
challenger once it and the control have ``min_requests`` each) compare each
challenger with the control arm:

* error rate (a decision with a stage error, timeout, open circuit or unexpected
  error) and fallback rate (served below the channel's first level): roll back
  when ``rate_challenger - rate_control - margin > 3 se``;
* latency: p99 of the arm's last ``latency_window`` decisions above
  ``latency_p99_ratio * p99_control + latency_p99_margin_ms``;
* the primary metric, ``metric_event`` feedback events (``POST /v1/feedback``)
  per decision: the always-valid mSPRT of :func:`recsys.evaluation.ab.msprt`
  (normal mixture, ``tau = tau_relative * pooled mean``, plug-in variances) on
  ``mean_challenger - mean_control``; roll back when its p-value falls to
  ``alpha`` with a negative difference (a significant *gain* does nothing: that
  is for ``recsys ab analyze``). Checking at every look keeps the type-I error
  <= alpha however often it looks.

Feedback finds its arm without any lookup table: a decision of an experiment arm
gets a UUID-shaped id of version 8 whose last two hex digits are the arm's index
(:func:`make_decision_id`, :func:`arm_index`); other decisions keep uuid4 ids.
Counters are per process (with ``workers > 1`` each worker judges its own share of
the traffic).
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from recsys.evaluation import ab
from recsys.experiments.assignment import HOLDBACK, NOT_IN_EXPERIMENT, ExperimentDesign, Holdback, assign
from recsys.service.bundles import BundleHolder
from recsys.service.config import BundlePaths, Experiment, Guardrails, ServeConfig, _build, mixture_paths
from recsys.service.explore import Exploration

DEFAULT = "default"
Z_RATE = 3.0   # error / fallback rate guardrails: one-sided z beyond the margin


def make_decision_id(arm_idx: int | None) -> str:
    """A 32-hex decision id; an experiment arm's index is encoded (uuid version 8,
    last two hex digits), other decisions get a plain uuid4."""
    if arm_idx is None:
        return uuid.uuid4().hex
    h = uuid.uuid4().hex
    return f"{h[:12]}8{h[13:30]}{arm_idx:02x}"


def arm_index(decision_id: str) -> int | None:
    """The arm index a decision id carries (None: not an experiment decision)."""
    if len(decision_id) != 32 or decision_id[12] != "8":
        return None
    try:
        return int(decision_id[30:], 16)
    except ValueError:
        return None


# ---------------------------------------------------------------- the decision function

def evaluate(g: Guardrails, n_c: Any, n_t: Any, err_c: Any, err_t: Any, fb_c: Any, fb_t: Any, p99_c: Any,
             p99_t: Any, sum_c: Any, sum_t: Any, sq_c: Any, sq_t: Any) -> dict[str, np.ndarray]:
    """The guardrail verdicts of a challenger (``_t``) against the control (``_c``)
    from summary statistics: counts ``n``, errors, fallbacks, latency p99 (ms), and
    the primary metric's sum and sum of squares over decisions. Every input may be
    an array (many simulated experiments / looks at once). Returns boolean arrays
    ``error_rate``, ``fallback_rate``, ``latency_p99``, ``primary_metric``,
    ``rollback`` (any of them, only where both arms have ``min_requests``), and
    the float arrays ``metric_diff``, ``metric_p_value``."""
    n_c, n_t = np.asarray(n_c, np.float64), np.asarray(n_t, np.float64)
    ready = (n_c >= g.min_requests) & (n_t >= g.min_requests)
    nc, nt = np.maximum(n_c, 1), np.maximum(n_t, 1)
    out: dict[str, np.ndarray] = {}
    for key, xc, xt, margin in (("error_rate", err_c, err_t, g.error_rate_margin),
                                ("fallback_rate", fb_c, fb_t, g.fallback_rate_margin)):
        rc, rt = np.asarray(xc) / nc, np.asarray(xt) / nt
        se = np.sqrt(rc * (1 - rc) / nc + rt * (1 - rt) / nt + 1e-12)
        out[key] = ready & (rt - rc - margin > Z_RATE * se)
    out["latency_p99"] = ready & (np.asarray(p99_t) > g.latency_p99_ratio * np.asarray(p99_c)
                                  + g.latency_p99_margin_ms)
    mc, mt = np.asarray(sum_c) / nc, np.asarray(sum_t) / nt
    vc = np.maximum(np.asarray(sq_c) / nc - mc ** 2, 0.0) * nc / np.maximum(nc - 1, 1)
    vt = np.maximum(np.asarray(sq_t) / nt - mt ** 2, 0.0) * nt / np.maximum(nt - 1, 1)
    pooled = (np.asarray(sum_c) + np.asarray(sum_t)) / (nc + nt)
    tau = np.maximum(g.tau_relative * pooled, 1e-9)
    diff, var = mt - mc, vc / nc + vt / nt
    # ab.msprt on the standardised difference (diff / tau, var / tau^2, tau = 1): the same likelihood
    # ratio with a per-look tau; its log_lr is per look (the running minimum is taken by the caller)
    log_lr = ab.msprt(diff / tau, var / tau ** 2, 1.0, g.alpha)["log_lr"]
    log_lr = np.where(var > 0, log_lr, 0.0)
    p = np.minimum(1.0, np.exp(-log_lr))
    out["primary_metric"] = ready & (p <= g.alpha) & (diff < 0)
    out["rollback"] = out["error_rate"] | out["fallback_rate"] | out["latency_p99"] | out["primary_metric"]
    out["metric_diff"], out["metric_p_value"] = diff, p
    return out


# ---------------------------------------------------------------- runtime

@dataclass
class ArmStats:
    n: int = 0
    errors: int = 0
    fallbacks: int = 0
    metric_sum: float = 0.0
    metric_sq: float = 0.0
    latencies: deque = field(default_factory=deque)
    events: dict[str, int] = field(default_factory=dict)  # decision -> metric events so far (sum of squares)

    def p99(self) -> float:
        return float(np.quantile(np.fromiter(self.latencies, float), 0.99)) if self.latencies else 0.0


@dataclass
class Route:
    arm: str                       # logged arm: an experiment arm, "holdback" or "default"
    index: int | None              # experiment arm index (encoded in the decision id)
    holder: BundleHolder
    exploration: dict[str, Exploration]
    no_personalised: bool = False   # the channel's chain without the personalised level (holdback option)

    def explore_for(self, channel: str) -> Exploration:
        return self.exploration.get(channel) or self.exploration.get("default") or Exploration()


class Router:
    """Routes a request to an arm's bundle holder and exploration; runs the guardrails.

    Args:
        cfg: the serving config (``cfg.experiment`` may be None: everyone is ``default``).
        champion: the holder of ``serve.bundles``.
        metrics: optional :class:`recsys.service.metrics.Metrics`.
    """

    def __init__(self, cfg: ServeConfig, champion: BundleHolder, metrics: Any = None):
        self.cfg, self.exp, self.metrics = cfg, cfg.experiment, metrics
        self.champion = champion
        self._lock = threading.Lock()
        self.rolled_back: dict[str, dict[str, Any]] = {}
        self.default = Route(DEFAULT, None, champion, cfg.exploration)
        self.routes: dict[str, Route] = {}
        self.stats: dict[str, ArmStats] = {}
        self._mixture: dict[tuple, BundleHolder] = {}  # candidate bundle paths -> holder (loaded once)
        self._by_exploration: dict[int, list[BundleHolder]] = {}
        self._add_mixtures("serve.exploration", cfg.exploration)
        if self.exp is None:
            return
        e = self.exp
        self.arm_names = list(e.arms)
        self.control = e.control or self.arm_names[0]
        self.design = ExperimentDesign(e.name, e.salt, {a: float(v.weight) for a, v in e.arms.items()},
                                       traffic=float(e.traffic),
                                       holdback=Holdback(e.holdback.salt, float(e.holdback.share))
                                       if e.holdback.share > 0 else None, control=self.control)
        for i, (name, arm) in enumerate(e.arms.items()):
            holder = champion
            if arm.bundles and name != self.control:
                holder = BundleHolder(_build(BundlePaths, {**cfg.bundles.__dict__, **arm.bundles},
                                             f"serve.experiment.arms.{name}.bundles"), champion.threads)
            ex = arm.exploration if arm.exploration is not None else cfg.exploration
            self._add_mixtures(f"serve.experiment.arms.{name}.exploration", ex)
            self.routes[name] = Route(name, i, holder, ex)
            self.stats[name] = ArmStats(latencies=deque(maxlen=int(e.guardrails.latency_window)))
        self.holdback = Route(HOLDBACK, 0xFE, champion, {}, e.holdback.serve == "non_personalised")

    def _add_mixtures(self, where: str, explorations: Mapping[str, Exploration]) -> None:
        for channel, ex in explorations.items():
            for paths in mixture_paths(self.cfg.bundles, ex, f"{where}.{channel}").values():
                key = tuple(sorted(paths.__dict__.items()))
                if key not in self._mixture:
                    self._mixture[key] = BundleHolder(paths, self.champion.threads)

    def mixture_holders(self, ex: Exploration) -> list[BundleHolder]:
        """The holders of an exploration's mixture candidates, in its order."""
        hit = self._by_exploration.get(id(ex))
        if hit is None:
            hit = [self._mixture[tuple(sorted(p.__dict__.items()))]
                   for p in mixture_paths(self.cfg.bundles, ex, "mixture").values()]
            self._by_exploration[id(ex)] = hit
        return hit

    # ------------------------------------------------------------ routing

    def assigned(self, user_id: str, context: Mapping[str, Any]) -> str:
        """The user's arm (sticky: a function of the id and the eligibility context)."""
        e = self.exp
        if e is None:
            return DEFAULT
        for key, values in e.eligible.items():
            if key not in context or str(context[key]) not in {str(v) for v in values}:
                return DEFAULT
        a = str(assign(np.array([user_id]), self.design)[0])
        return DEFAULT if a == NOT_IN_EXPERIMENT else a

    def route(self, user_id: str, context: Mapping[str, Any]) -> Route:
        a = self.assigned(user_id, context)
        if a == DEFAULT:
            return self.default
        if a == HOLDBACK:
            return self.holdback
        if a in self.rolled_back:
            return self.default
        return self.routes[a]

    def reload(self, arm: str | None, paths: BundlePaths | None) -> Any:
        """Swap one arm's bundle set atomically (``None``: the champion). A challenger
        that shares the champion's holder gets its own holder, loaded whole first."""
        if arm is None or (self.exp is not None and arm == self.control):
            return self.champion.swap(paths)
        if arm not in self.routes:
            from recsys.service.bundles import BundleSetError

            raise BundleSetError(f"arm {arm!r}: no such arm (arms: {', '.join(self.routes) or 'none'})")
        r = self.routes[arm]
        if r.holder is self.champion:
            new = BundleHolder(paths or self.champion.paths, self.champion.threads)
            r.holder = new
            return new.current
        return r.holder.swap(paths)

    # ------------------------------------------------------------ guardrails

    def record_decision(self, route: Route, latency_ms: float, fallback: bool, error: bool) -> None:
        if route.index is None or route.arm not in self.stats:
            return
        s = self.stats[route.arm]
        with self._lock:
            s.n += 1
            s.errors += int(error)
            s.fallbacks += int(fallback)
            s.latencies.append(float(latency_ms))
        g = self.exp.guardrails if self.exp is not None else None
        if g is not None and g.enabled and route.arm != self.control and s.n % int(g.check_every) == 0:
            self.check(route.arm)

    def record_feedback(self, decision_id: str, event: str) -> None:
        if self.exp is None or event != self.exp.guardrails.metric_event:
            return
        i = arm_index(decision_id)
        if i is None or i >= len(self.arm_names):
            return
        s = self.stats[self.arm_names[i]]
        with self._lock:
            c = s.events.pop(decision_id, 0)
            s.events[decision_id] = c + 1
            if len(s.events) > 200_000:  # oldest first: a late repeat event then counts as a first one
                s.events.pop(next(iter(s.events)))
            s.metric_sum += 1
            s.metric_sq += 2 * c + 1

    def verdict(self, arm: str) -> dict[str, Any]:
        assert self.exp is not None
        c, t = self.stats[self.control], self.stats[arm]
        with self._lock:
            args = (c.n, t.n, c.errors, t.errors, c.fallbacks, t.fallbacks, c.p99(), t.p99(), c.metric_sum,
                    t.metric_sum, c.metric_sq, t.metric_sq)
        v = evaluate(self.exp.guardrails, *args)
        return {k: (bool(x) if x.dtype == bool else float(x)) for k, x in v.items()} | {"n_control": c.n, "n": t.n}

    def check(self, arm: str) -> dict[str, Any]:
        """Evaluate one challenger now; roll it back when a guardrail trips."""
        v = self.verdict(arm)
        if v["rollback"] and arm not in self.rolled_back:
            why = [k for k in ("error_rate", "fallback_rate", "latency_p99", "primary_metric") if v[k]]
            self.rolled_back[arm] = {"reasons": why, "at_decision": v["n"], "time": time.time(), "verdict": v}
            if self.metrics is not None:
                self.metrics.rollbacks.labels(arm, why[0]).inc()
            print(f"warning: experiment arm {arm!r} rolled back ({', '.join(why)}) after {v['n']} decisions; "
                  f"its users are served the champion", flush=True)
        return v

    def restore(self, arm: str) -> bool:
        """Serve a rolled-back arm again (fresh counters)."""
        if self.rolled_back.pop(arm, None) is None:
            return False
        self.stats[arm] = ArmStats(latencies=deque(maxlen=self.stats[arm].latencies.maxlen))
        return True

    def status(self) -> dict[str, Any]:
        if self.exp is None:
            return {"experiment": None}
        arms = {}
        for a, r in self.routes.items():
            s = self.stats[a]
            arms[a] = {"weight": float(self.exp.arms[a].weight), "control": a == self.control, "decisions": s.n,
                       "metric_events": s.metric_sum, "errors": s.errors, "fallbacks": s.fallbacks,
                       "p99_ms": s.p99(), "versions": dict(r.holder.current.versions),
                       "rolled_back": self.rolled_back.get(a)}
            if a != self.control:
                arms[a]["verdict"] = self.verdict(a)
        return {"experiment": self.exp.name, "salt": self.exp.salt, "traffic": float(self.exp.traffic),
                "holdback": {"share": float(self.exp.holdback.share), "serve": self.exp.holdback.serve},
                "eligible": dict(self.exp.eligible), "arms": arms}


# ---------------------------------------------------------------- simulation of the guardrails

def simulate_guardrails(g: Guardrails, *, n_sims: int = 200, max_requests: int = 60_000,
                        ctr_control: float = 0.1, relative_effect: float = 0.0, share_challenger: float = 0.5,
                        error_rate: float = 0.01, fallback_rate: float = 0.03, latency_ms: float = 20.0,
                        latency_sigma: float = 0.5, seed: int = 0) -> dict[str, Any]:
    """Canary experiments fed to :func:`evaluate` exactly as :class:`Router` does:
    each request goes to the challenger with probability ``share_challenger`` (else
    the control), gets a click with probability ``ctr_control * (1 +
    relative_effect)`` (challenger) or ``ctr_control``, an error / fallback / a
    lognormal latency with the same distribution in both arms; the guardrails are
    checked every ``check_every`` challenger decisions. Returns the rollback rate,
    the reasons and the requests (both arms) until rollback."""
    rng = np.random.default_rng(seed)
    rolled, at_req, reasons = np.zeros(n_sims, bool), np.full(n_sims, -1, np.int64), {}
    W = int(g.latency_window)
    p_t = ctr_control * (1 + relative_effect)
    for s in range(n_sims):
        is_t = rng.random(max_requests) < share_challenger
        click = rng.random(max_requests) < np.where(is_t, p_t, ctr_control)
        err = rng.random(max_requests) < error_rate
        fb = err | (rng.random(max_requests) < fallback_rate)
        lat = latency_ms * np.exp(latency_sigma * rng.standard_normal(max_requests))
        n_t = np.cumsum(is_t)
        looks = np.searchsorted(n_t, np.arange(g.check_every, n_t[-1] + 1, g.check_every))  # request index
        cum = {}
        for name, x in (("n", np.ones(max_requests)), ("err", err), ("fb", fb), ("click", click)):
            xt, xc = np.cumsum(x * is_t)[looks], np.cumsum(x * ~is_t)[looks]
            cum[name] = (xc, xt)
        lat_t, lat_c = lat[is_t], lat[~is_t]
        nt_l, nc_l = cum["n"][1].astype(int), cum["n"][0].astype(int)
        p99_t = np.array([np.quantile(lat_t[max(0, k - W):k], 0.99) if k else 0.0 for k in nt_l])
        p99_c = np.array([np.quantile(lat_c[max(0, k - W):k], 0.99) if k else 0.0 for k in nc_l])
        (cc, ct) = cum["click"]
        v = evaluate(g, nc_l, nt_l, *cum["err"], *cum["fb"], p99_c, p99_t, cc, ct, cc, ct)  # clicks are 0/1
        hit = np.flatnonzero(v["rollback"])
        if len(hit):
            j = hit[0]
            rolled[s], at_req[s] = True, int(looks[j]) + 1
            for key in ("error_rate", "fallback_rate", "latency_p99", "primary_metric"):
                if v[key][j]:
                    reasons[key] = reasons.get(key, 0) + 1
    det = at_req[rolled]
    return {"n_sims": n_sims, "max_requests": max_requests, "ctr_control": ctr_control,
            "relative_effect": relative_effect, "share_challenger": share_challenger,
            "rollback_rate": float(rolled.mean()), "reasons": reasons,
            "requests_to_rollback": {"median": float(np.median(det)) if len(det) else None,
                                     "p10": float(np.quantile(det, 0.1)) if len(det) else None,
                                     "p90": float(np.quantile(det, 0.9)) if len(det) else None,
                                     "mean": float(det.mean()) if len(det) else None},
            "guardrails": {k: getattr(g, k) for k in g.__dataclass_fields__}}

