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
  value (:func:`recsys.features.transforms.evaluate`, a numpy function shared by
  batch and online).

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
