"""Feature values from accumulators, and the fitted parts some features read.

:func:`evaluate` - one numpy function that the batch, as-of and online paths all
call - turns accumulator values as of ``t`` into feature values (identity, ratio,
std, recency, ``eb_rate``, ``zscore``, ``rank``; the transforms of
:mod:`recsys.features.definitions`); :func:`fit_params` fits the empirical-Bayes
Beta priors and the cohort statistics (mean / std / quantiles per activity
segment) those transforms read.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from recsys.features.definitions import PARAM_TRANSFORMS, FeatureSet
from recsys.utils.io import sha256_json


def segment_of(values: np.ndarray, edges: list[float]) -> np.ndarray:
    """Segment index 0..len(edges): ``values < edges[0]`` -> 0, etc."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")


def _ratio(num: np.ndarray, den: np.ndarray, default: float, complement: bool) -> np.ndarray:
    ok = den > 0
    safe = np.where(ok, den, 1.0)
    r = (den - num) / safe if complement else num / safe
    return np.where(ok, r, default)


def evaluate(fs: FeatureSet, entity: str, accs: Mapping[str, np.ndarray], t: np.ndarray | float,
             params: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
    """Feature values of ``entity`` from accumulator values *as of* ``t``.

    ``accs``: accumulator name -> (N,) float64 (decay already applied at ``t``,
    windows already restricted, ``max`` = NaN where nothing was seen). ``t``: (N,)
    or a scalar. ``params``: fitted priors / cohort statistics (:func:`fit_params`);
    ``None`` leaves the fitted features out. The one function both paths call.
    """
    out: dict[str, np.ndarray] = {}
    t = np.asarray(t, dtype=np.float64)
    plan = _eval_plan(fs, entity)
    pre: dict[str, np.ndarray] = {}
    segs: dict[str, np.ndarray] = {}  # segment accumulator -> segment index (shared by features)
    if plan.small_ok(accs):
        pre = plan.block(accs)
    for f in plan.features:
        if f.transform in PARAM_TRANSFORMS and params is None:
            continue
        v = pre.get(f.name)
        if v is not None:
            out[f.name] = v
            continue
        x = [np.asarray(accs[n], dtype=np.float64) for n in f.inputs] if f.transform not in ("zscore", "rank") else []
        if f.transform == "identity":
            v = np.where(np.isnan(x[0]), f.default, x[0])
        elif f.transform == "ratio":
            v = _ratio(x[0], x[1], f.default, f.complement)
        elif f.transform == "std":
            s, q, n = x
            ok = n > 0
            mean = s / np.where(ok, n, 1.0)
            v = np.where(ok, np.sqrt(np.maximum(q / np.where(ok, n, 1.0) - mean * mean, 0.0)), f.default)
        elif f.transform == "recency":
            missing = np.isnan(x[0])
            v = np.where(missing, f.default, t - np.where(missing, 0.0, x[0]))
        elif f.transform == "eb_rate":
            seg = segs.get(f.segment)
            if seg is None:
                seg = segs[f.segment] = segment_of(accs[f.segment], fs.segments[f.segment])
            a = _param_array(params[f.name]["alpha"])[seg]
            b = _param_array(params[f.name]["beta"])[seg]
            num, den = x
            v = ((den - num) + b) / (den + a + b) if f.complement else (num + a) / (den + a + b)
        else:  # zscore / rank within segment
            seg = segs.get(f.segment)
            if seg is None:
                seg = segs[f.segment] = segment_of(accs[f.segment], fs.segments[f.segment])
            src = out[f.inputs[0]]
            p = params[f.name]
            if f.transform == "zscore":
                v = (src - _param_array(p["mean"])[seg]) / _param_array(p["std"])[seg]
            else:
                knots = _ecdf_knots(p["quantiles"])  # per segment, from (n_segments, n_levels)
                if src.shape == seg.shape and src.size == 1:  # one key (online read)
                    uq, mid = knots[int(seg.flat[0])]
                    out[f.name] = np.interp(src, uq, mid)
                    continue
                v = np.empty(np.broadcast(src, seg).shape)
                src_b, seg_b = np.broadcast_arrays(src, seg)
                if src_b.size == 1:
                    uq, mid = knots[int(seg_b.flat[0])]
                    v[...] = np.interp(src_b, uq, mid)
                else:
                    for s in np.unique(seg_b):
                        m = seg_b == s
                        uq, mid = knots[s]
                        v[m] = np.interp(src_b[m], uq, mid)
        out[f.name] = np.asarray(v, dtype=np.float64)
    return out


#: rows up to which :func:`evaluate` computes identity / ratio features as one
#: (features x rows) block (per-call overhead dominates online reads of a few keys;
#: the element-wise operations, hence the values, are those of the per-feature loop)
SMALL_ROWS = 64


class _EvalPlan:
    """Per (feature set, entity): the features in order and the identity / ratio
    features' inputs, so a read of a few keys costs a handful of numpy calls."""

    def __init__(self, fs: FeatureSet, entity: str):
        self.features = fs.entity_features(entity)
        ident = [f for f in self.features if f.transform == "identity"]
        ratio = [f for f in self.features if f.transform == "ratio"]
        self.id_names = [f.name for f in ident]
        self.id_inputs = [f.inputs[0] for f in ident]
        self.id_default = np.array([f.default for f in ident], dtype=np.float64)[:, None]
        self.r_names = [f.name for f in ratio]
        self.r_num = [f.inputs[0] for f in ratio]
        self.r_den = [f.inputs[1] for f in ratio]
        self.r_default = np.array([f.default for f in ratio], dtype=np.float64)[:, None]
        self.r_ci = np.flatnonzero([f.complement for f in ratio])
        self.probe = (self.id_inputs + self.r_num)[:1]

    def small_ok(self, accs: Mapping[str, np.ndarray]) -> bool:
        if not self.probe:
            return False
        a = accs[self.probe[0]]
        return isinstance(a, np.ndarray) and a.ndim == 1 and len(a) <= SMALL_ROWS

    def block(self, accs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        try:
            if self.id_names:
                x = np.array([accs[n] for n in self.id_inputs], dtype=np.float64)
                v = np.where(np.isnan(x), self.id_default, x)
                out.update(zip(self.id_names, v))
            if self.r_names:
                num = np.array([accs[n] for n in self.r_num], dtype=np.float64)
                den = np.array([accs[n] for n in self.r_den], dtype=np.float64)
                ok = den > 0
                safe = np.where(ok, den, 1.0)
                r = num / safe
                if self.r_ci.size:  # complement: (den - num) / den, on those rows only
                    c = self.r_ci
                    r[c] = (den[c] - num[c]) / safe[c]
                out.update(zip(self.r_names, np.where(ok, r, self.r_default)))
        except ValueError:  # inputs of different lengths: the per-feature loop handles them
            return {}
        return out


_EVAL_PLANS: dict[tuple[int, str], tuple[FeatureSet, _EvalPlan]] = {}


def _eval_plan(fs: FeatureSet, entity: str) -> _EvalPlan:
    """:class:`_EvalPlan` cached per feature-set object (keyed by identity; the
    cache holds the object so its id stays unique)."""
    hit = _EVAL_PLANS.get((id(fs), entity))
    if hit is not None and hit[0] is fs:
        return hit[1]
    plan = _EvalPlan(fs, entity)
    if len(_EVAL_PLANS) > 256:
        _EVAL_PLANS.clear()
    _EVAL_PLANS[(id(fs), entity)] = (fs, plan)
    return plan


def _ecdf(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Percentile (0..1) of ``x`` from fitted quantiles ``q`` at evenly spaced
    levels; tied quantiles take their middle level, so the map is continuous
    (float noise in ``x`` cannot flip a rank) and constant beyond the ends."""
    uq, mid = _knots(np.asarray(q, dtype=np.float64))
    return np.interp(x, uq, mid)


def _knots(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    levels = np.linspace(0.0, 1.0, len(q))
    uq, inv = np.unique(q, return_inverse=True)
    return uq, np.bincount(inv, levels) / np.bincount(inv)


_KNOTS: dict[int, tuple[Any, list[tuple[np.ndarray, np.ndarray]]]] = {}
_ARRAYS: dict[int, tuple[Any, np.ndarray]] = {}


def _param_array(values: Any) -> np.ndarray:
    """``np.asarray(values)`` of a fitted parameter list, once per object (keyed by
    identity, like :func:`_ecdf_knots`)."""
    hit = _ARRAYS.get(id(values))
    if hit is not None and hit[0] is values:
        return hit[1]
    arr = np.asarray(values)
    if len(_ARRAYS) > 1024:
        _ARRAYS.clear()
    _ARRAYS[id(values)] = (values, arr)
    return arr


def _ecdf_knots(quantiles: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`_knots` of every segment's quantiles, computed once per params object
    (keyed by identity; the cache holds the object so its id stays unique)."""
    hit = _KNOTS.get(id(quantiles))
    if hit is not None and hit[0] is quantiles:
        return hit[1]
    knots = [_knots(q) for q in np.asarray(quantiles, dtype=np.float64)]
    if len(_KNOTS) > 256:
        _KNOTS.clear()
    _KNOTS[id(quantiles)] = (quantiles, knots)
    return knots


def fit_params(fs: FeatureSet, snapshots: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, Any]:
    """Fit empirical-Bayes priors and cohort statistics from snapshot values.

    ``snapshots``: entity -> {accumulator or feature name: (N,) array} as of the
    fit time (one row per entity key seen before it). Beta priors by the method
    of moments per segment, binomial noise removed, falling back to the global
    fit when a segment has fewer than ``eb_min_entities`` entities with trials.
    """
    params: dict[str, Any] = {}
    for f in fs.features:
        if f.transform not in PARAM_TRANSFORMS:
            continue
        snap = snapshots.get(f.entity, {})
        edges = fs.segments[f.segment]
        n_seg = len(edges) + 1
        seg = segment_of(np.asarray(snap.get(f.segment, np.zeros(0))), edges)
        if f.transform == "eb_rate":
            num = np.asarray(snap.get(f.inputs[0], np.zeros(0)), dtype=np.float64)
            den = np.asarray(snap.get(f.inputs[1], np.zeros(0)), dtype=np.float64)
            if f.complement:
                num = den - num
            g = _beta_moments(num, den)
            ab = [_beta_moments(num[seg == s], den[seg == s], fs.eb_min_entities) or g for s in range(n_seg)]
            params[f.name] = {"alpha": [a for a, _ in ab], "beta": [b for _, b in ab]}
        else:
            x = np.asarray(snap.get(f.inputs[0], np.zeros(0)), dtype=np.float64)
            if f.transform == "zscore":
                gm, gs = (float(x.mean()), float(x.std())) if len(x) else (0.0, 1.0)
                means, stds = [], []
                for s in range(n_seg):
                    xs = x[seg == s]
                    m, sd = (float(xs.mean()), float(xs.std())) if len(xs) >= 2 else (gm, gs)
                    means.append(m)
                    stds.append(sd if sd > 0 else 1.0)
                params[f.name] = {"mean": means, "std": stds}
            else:
                levels = np.linspace(0, 1, 101)
                gq = np.quantile(x, levels) if len(x) else np.zeros(len(levels))
                params[f.name] = {"quantiles": [
                    (np.quantile(x[seg == s], levels) if (seg == s).sum() >= 2 else gq).tolist() for s in range(n_seg)]}
    return params


def _beta_moments(num: np.ndarray, den: np.ndarray, min_n: int = 1) -> tuple[float, float] | None:
    """Beta(alpha, beta) prior of rates ``num / den`` by the method of moments.

    Mean = pooled rate; variance of the true rates = the trials-weighted variance
    of the observed rates minus the expected binomial noise. Strength ``alpha +
    beta`` is clipped to [0.5, 1e4]. ``None`` when fewer than ``min_n`` entities."""
    ok = den > 0
    num, den = num[ok], den[ok]
    if len(den) < max(min_n, 1):
        return None if min_n > 1 else (1.0, 1.0)
    m = float(num.sum() / den.sum())
    m = min(max(m, 1e-6), 1 - 1e-6)
    r = num / den
    w = den / den.sum()
    var_obs = float((w * (r - m) ** 2).sum())
    noise = m * (1 - m) * float((w / den).sum())
    var_true = var_obs - noise
    strength = m * (1 - m) / var_true - 1.0 if var_true > 0 else 1e4
    strength = float(min(max(strength, 0.5), 1e4))
    return m * strength, (1 - m) * strength


def params_version(params: Mapping[str, Any]) -> str:
    return sha256_json(params)[:12]
