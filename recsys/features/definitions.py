"""Behavioural feature definitions: declared once, read by the batch, point-in-time
and online code paths alike.

Three layers, each a frozen dataclass:

* :class:`Source` - what one event contributes (a weight): ``click`` = 1 on click
  events, ``dwell`` = the value of a view, ``session_start`` = 1 on the first event
  of a (user, session), ``cart_session`` = 1 on the first add-to-cart of a session,
  ``converted_session`` = 1 when a session first has both a cart and a purchase.
  Only behavioural events (view, click, add_to_cart, purchase) count.
* :class:`Accumulator` - an additive (or max) state per entity key over a source:
  ``total`` (lifetime sum), ``decay`` (sum of ``w * 2^(-(t - t_i) / half_life)``),
  ``window`` (sum over the current bucket and the ``size / bucket - 1`` buckets
  before it - a tiled window, exactly reproducible online), ``max``.
* :class:`Feature` - the user-facing feature: name, entity, source events,
  aggregation, window / half-life, dtype, default for missing, version, owner,
  description, and the transform that turns accumulators (as of time t) into the
  value (:func:`evaluate`, a numpy function shared by batch and online).

A value *as of t* uses only events with ``timestamp < t`` (strict).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Mapping

import numpy as np

from recsys.utils.io import sha256_json

BEHAVIOURAL = ("view", "click", "add_to_cart", "purchase")
#: entity -> key columns of the events table (``category`` is attached from the items table)
ENTITIES: dict[str, tuple[str, ...]] = {
    "user": ("user_id",),
    "item": ("item_id",),
    "user_item": ("user_id", "item_id"),
    "user_category": ("user_id", "category"),
}
MODES = ("total", "decay", "window", "max")
TRANSFORMS = ("identity", "ratio", "std", "recency", "eb_rate", "zscore", "rank")
PARAM_TRANSFORMS = ("eb_rate", "zscore", "rank")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def seconds(text: str | float | int) -> float:
    """``"90s" | "5m" | "1h" | "7d" | "2w" | 3600`` -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smhdw])\s*", str(text))
    if not m:
        raise ValueError(f"bad duration {text!r}: expected e.g. 30s, 5m, 1h, 7d, 2w")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class Source:
    """Per-event weight. ``weight``: one | value | value_sq | value_n (1 where the
    value is present) | time; ``session``: start | cart | converted (user only)."""

    name: str
    event_types: tuple[str, ...]
    weight: str = "one"
    session: str | None = None


SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("event", BEHAVIOURAL),
    Source("view", ("view",)),
    Source("click", ("click",)),
    Source("add_to_cart", ("add_to_cart",)),
    Source("purchase", ("purchase",)),
    Source("dwell", ("view",), "value"),
    Source("dwell_sq", ("view",), "value_sq"),
    Source("dwell_n", ("view",), "value_n"),
    Source("time", BEHAVIOURAL, "time"),
    Source("session_start", BEHAVIOURAL, "one", "start"),
    Source("cart_session", BEHAVIOURAL, "one", "cart"),
    Source("converted_session", BEHAVIOURAL, "one", "converted"),
]}


@dataclass(frozen=True)
class Accumulator:
    entity: str
    source: str
    mode: str = "total"
    half_life: float | None = None  # seconds (decay)
    window: float | None = None     # seconds (window)
    bucket: float | None = None     # seconds (window)

    @cached_property
    def name(self) -> str:  # cached: read paths look it up per accumulator per call
        extra = ""
        if self.mode == "decay":
            extra = f":{self.half_life:g}"
        elif self.mode == "window":
            extra = f":{self.window:g}/{self.bucket:g}"
        return f"{self.entity}:{self.source}:{self.mode}{extra}"

    @property
    def n_buckets(self) -> int:
        return int(round(self.window / self.bucket))

    def window_start(self, t: np.ndarray) -> np.ndarray:
        """First second counted by the window as of ``t``: the start of the bucket
        ``n_buckets - 1`` before the bucket of ``t``."""
        return (np.floor(np.asarray(t, dtype=np.float64) / self.bucket) - (self.n_buckets - 1)) * self.bucket


@dataclass(frozen=True)
class Feature:
    name: str
    entity: str
    source_events: tuple[str, ...]
    aggregation: str                 # human-readable: count, sum, mean, std, max, rate, recency, ...
    transform: str                   # one of TRANSFORMS: how evaluate() computes it
    inputs: tuple[str, ...]          # accumulator names (or, for zscore/rank, one feature name)
    window: str | None = None
    half_life: str | None = None
    dtype: str = "float64"
    default: float = 0.0
    version: int = 1
    owner: str = "features"
    description: str = ""
    complement: bool = False         # ratio / eb_rate: (den - num) / den
    segment: str | None = None       # accumulator name whose value picks the segment

    def spec(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FeatureSet:
    """Features plus the accumulators they need, and the segment edges."""

    name: str
    features: list[Feature]
    segments: dict[str, list[float]] = field(default_factory=dict)  # accumulator name -> edges
    eb_min_entities: int = 20
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_name = {f.name: f for f in self.features}
        if len(self.by_name) != len(self.features):
            raise ValueError("duplicate feature names in the feature set")
        self.accumulators: dict[str, Accumulator] = {}
        for f in self.features:
            for a in self.feature_accumulators(f):
                self.accumulators.setdefault(a.name, a)

    def feature_accumulators(self, f: Feature) -> list[Accumulator]:
        names = list(f.inputs) if f.transform not in ("zscore", "rank") else []
        if f.segment:
            names.append(f.segment)
        return [_ACC_REGISTRY[n] for n in names]

    def entity_features(self, entity: str) -> list[Feature]:
        return [f for f in self.features if f.entity == entity]

    def entity_accumulators(self, entity: str) -> list[Accumulator]:
        return [a for a in self.accumulators.values() if a.entity == entity]

    @property
    def entities(self) -> list[str]:
        return [e for e in ENTITIES if any(f.entity == e for f in self.features)]

    @property
    def version(self) -> str:
        """Hash of every definition (recorded by training runs and export manifests)."""
        body = {"name": self.name, "features": [f.spec() for f in self.features],
                "segments": self.segments, "eb_min_entities": self.eb_min_entities}
        return f"{self.name}/{sha256_json(body)[:12]}"

    def describe(self) -> list[dict[str, Any]]:
        return [f.spec() for f in self.features]


_ACC_REGISTRY: dict[str, Accumulator] = {}


def acc(entity: str, source: str, mode: str = "total", **kw: float) -> str:
    """Register an accumulator and return its name."""
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}")
    if SOURCES[source].session and (entity != "user" or mode != "total"):
        raise ValueError(f"session source {source!r} is only defined for user totals")
    a = Accumulator(entity, source, mode, **kw)
    _ACC_REGISTRY[a.name] = a
    return a.name


# ---------------------------------------------------------------- families

_SHORT = {"user": "user", "item": "item", "user_item": "ui", "user_category": "uc"}


def _label(sec: float) -> str:
    for unit in ("d", "h", "m"):
        if sec >= _UNITS[unit] and sec % _UNITS[unit] == 0:
            return f"{int(sec // _UNITS[unit])}{unit}"
    return f"{sec:g}s"


def build_feature_set(cfg: Mapping[str, Any] | None = None) -> FeatureSet:
    """The behavioural feature set from a config mapping (``configs/features/*.yaml``)."""
    cfg = {k: v for k, v in dict(cfg or {}).items() if not str(k).startswith("_")}
    owner = str(cfg.get("owner", "features"))
    version = int(cfg.get("version", 1))
    half_lives = [seconds(h) for h in cfg.get("half_lives", ["1d", "7d"])]
    windows = [(seconds(w["size"]), seconds(w["bucket"])) for w in cfg.get("windows", [
        {"size": "1h", "bucket": "5m"}, {"size": "1d", "bucket": "1h"},
        {"size": "7d", "bucket": "1d"}, {"size": "28d", "bucket": "1d"}])]
    for size, bucket in windows:
        if bucket <= 0 or abs(size / bucket - round(size / bucket)) > 1e-9 or size < bucket:
            raise ValueError(f"window {size:g}s must be a whole number of {bucket:g}s buckets")
    seg_cfg = cfg.get("segments", {})
    recency_default = seconds(cfg.get("recency_default", "365d"))
    feats: list[Feature] = []
    common = {"owner": owner, "version": version}

    def add(name: str, entity: str, agg: str, transform: str, inputs: tuple[str, ...], desc: str,
            events: tuple[str, ...], **kw: Any) -> None:
        feats.append(Feature(name=name, entity=entity, source_events=events, aggregation=agg, transform=transform,
                             inputs=inputs, description=desc, **{**common, **kw}))

    segments: dict[str, list[float]] = {}
    seg_acc: dict[str, str] = {}
    for entity, default_src, default_edges in (("user", "event", [10, 50, 200]), ("item", "view", [20, 200, 2000]),
                                                ("user_category", "view", [3, 10, 30])):
        sc = seg_cfg.get(entity, {})
        name = acc(entity, str(sc.get("source", default_src)))
        seg_acc[entity] = name
        segments[name] = [float(x) for x in sc.get("edges", default_edges)]

    for entity in cfg.get("entities", list(ENTITIES)):
        if entity not in ENTITIES:
            raise ValueError(f"unknown entity {entity!r}; known: {list(ENTITIES)}")
        p = _SHORT[entity]
        counts = {"user": ("event", "view", "click", "add_to_cart", "purchase"),
                  "item": ("event", "view", "click", "add_to_cart", "purchase"),
                  "user_item": ("view", "click", "add_to_cart"),
                  "user_category": ("view", "click")}[entity]
        for s in counts:
            add(f"{p}_{s}s" if s != "add_to_cart" else f"{p}_carts", entity, "count", "identity",
                (acc(entity, s),), f"lifetime number of {s} events", SOURCES[s].event_types, dtype="int64")
        # click-through rate (clicks per view), raw and empirical-Bayes shrunk
        if entity != "user_item":
            add(f"{p}_ctr", entity, "rate", "ratio", (acc(entity, "click"), acc(entity, "view")),
                "clicks / views (default when no views)", ("view", "click"))
            add(f"{p}_ctr_eb", entity, "rate (empirical Bayes)", "eb_rate",
                (acc(entity, "click"), acc(entity, "view")),
                "clicks / views shrunk toward the segment's Beta prior fitted from data",
                ("view", "click"), segment=seg_acc.get(entity), default=float("nan"))
        # dwell statistics
        if entity in ("user", "item", "user_category"):
            dn, ds, dq = acc(entity, "dwell_n"), acc(entity, "dwell"), acc(entity, "dwell_sq")
            add(f"{p}_dwell_mean", entity, "mean", "ratio", (ds, dn), "mean dwell seconds of views", ("view",))
            if entity != "user_category":
                add(f"{p}_dwell_std", entity, "std", "std", (ds, dq, dn), "std of dwell seconds of views", ("view",))
                add(f"{p}_dwell_max", entity, "max", "identity", (acc(entity, "dwell", "max"),),
                    "longest dwell of a view", ("view",))
        # recency
        add(f"{p}_recency_s", entity, "recency", "recency", (acc(entity, "time", "max"),),
            "seconds since the last behavioural event", BEHAVIOURAL, default=recency_default)
        # time-decayed counts and sums
        decayed = {"user": ("event", "click", "dwell"), "item": ("view", "click"),
                   "user_item": ("view",), "user_category": ("click",)}[entity]
        for h in half_lives:
            for s in decayed:
                kind = "sum" if s == "dwell" else "count"
                add(f"{p}_{s}_decay_{_label(h)}", entity, f"time-decayed {kind}", "identity",
                    (acc(entity, s, "decay", half_life=h),), f"{kind} of {s}, half-life {_label(h)}",
                    SOURCES[s].event_types, half_life=_label(h))
        # rolling (tiled) windows
        windowed = {"user": ("event", "click"), "item": ("view", "click")}.get(entity, ())
        for size, bucket in windows:
            for s in windowed:
                add(f"{p}_{s}s_{_label(size)}", entity, "windowed count", "identity",
                    (acc(entity, s, "window", window=size, bucket=bucket),),
                    f"{s} events in the last {_label(size)} ({_label(bucket)} buckets)",
                    SOURCES[s].event_types, window=_label(size), dtype="int64")
        if entity == "user":
            add("user_sessions", entity, "count distinct sessions", "identity", (acc("user", "session_start"),),
                "sessions with at least one event", BEHAVIOURAL, dtype="int64")
            add("user_nav_depth", entity, "mean events per session", "ratio",
                (acc("user", "event"), acc("user", "session_start")), "navigation depth per session", BEHAVIOURAL)
            add("user_abandon_rate", entity, "rate", "ratio",
                (acc("user", "converted_session"), acc("user", "cart_session")),
                "sessions with an add-to-cart but no purchase / sessions with an add-to-cart",
                ("add_to_cart", "purchase"), complement=True)
            add("user_abandon_rate_eb", entity, "rate (empirical Bayes)", "eb_rate",
                (acc("user", "converted_session"), acc("user", "cart_session")),
                "abandonment rate shrunk toward the activity segment's Beta prior", ("add_to_cart", "purchase"),
                complement=True, segment=seg_acc["user"], default=float("nan"))
    # cohort normalisation within the activity segment
    for src in cfg.get("normalise", ["user_events_7d", "user_clicks_28d", "user_event_decay_7d"]):
        if src not in {f.name for f in feats}:
            raise ValueError(f"normalise: unknown feature {src!r}")
        base = next(f for f in feats if f.name == src)
        for tr, what in (("zscore", "z-score"), ("rank", "percentile rank")):
            add(f"{src}_{'z' if tr == 'zscore' else 'rank'}", base.entity, f"{what} within segment", tr, (src,),
                f"{src} as a {what} within the entity's activity segment (fitted)", base.source_events,
                window=base.window, half_life=base.half_life, segment=seg_acc[base.entity], default=float("nan"))
    return FeatureSet(str(cfg.get("name", "behavioural")), feats, segments,
                      int(cfg.get("eb_min_entities", 20)), cfg)


def feature_set(**cfg: Any) -> FeatureSet:
    """Hydra target of ``configs/features/*.yaml``."""
    return build_feature_set(cfg)


# ---------------------------------------------------------------- evaluation


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
