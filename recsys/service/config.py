"""The serving config: which bundles, stage budgets, caps, fallback chains, diversity.

Built from a plain mapping (``recsys serve`` passes the composed Hydra config as a
dict; tests pass dicts). An unknown key, a wrong type or an out-of-range value is
one :class:`ServiceConfigError` line naming the key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from recsys.service.explore import Exploration
from recsys.utils.errors import RecsysError

#: the fallback levels, best first
LEVELS = ("personalised", "segment_popularity", "global_popularity", "static")


class ServiceConfigError(RecsysError):
    """A serving config that cannot be used."""


@dataclass
class BundlePaths:
    """Bundle folders and side files; ``None`` = not served (its level is skipped)."""

    encoder: str | None = None         # recsys export of a `train` run (query encoder; null: the index's user vectors)
    ranker: str | None = None          # recsys export of a `rank train` run
    index: str | None = None           # recsys index build
    catalogue: str | None = None       # Parquet: item_id, category, available, + item-level ranker inputs
    users: str | None = None           # Parquet: user_id + user-level ranker inputs (e.g. user_group)
    events: str | None = None          # Parquet event store replayed into the ranker's behavioural features at start


@dataclass
class Budgets:
    """Per-stage time budgets in milliseconds; a stage past its budget drops a level.
    ``queue_ms``: how long a request may wait for a personalised-level thread (all
    busy: the service is overloaded and the request degrades to the next level)."""

    state_ms: float = 50.0
    queue_ms: float = 20.0
    query_ms: float = 50.0
    retrieve_ms: float = 50.0
    rank_ms: float = 100.0


@dataclass
class Cap:
    """At most ``limit`` items shown within the last ``window_s`` seconds."""

    limit: int
    window_s: float


@dataclass
class Caps:
    user_item: Cap | None = None      # the same item to the same user
    user_channel: Cap | None = None   # items to a user on one channel
    user: Cap | None = None           # items to a user over every channel


@dataclass
class Diversity:
    method: str = "mmr"               # mmr (item embeddings) | category_caps | none
    mmr_lambda: float = 0.7           # relevance weight of MMR (1 = no diversity)
    max_per_category: int = 3         # category_caps: at most this many per category in the slate


@dataclass
class ExposureRerank:
    """The exposure-aware re-ranker (:func:`recsys.policies.exposure.exposure_order`) on
    the personalised level: over-exposed groups are penalised by
    ``weight * log(share / target)`` against the exposure this worker has served on the
    channel so far (position-discounted; amortised over requests)."""

    weight: float = 0.0               # penalty strength; 0 = off
    group: str = "category"           # category (the catalogue's) | item
    target: dict[str, float] | None = None   # target exposure share per group; null = equal shares
    head: int = 50                    # ranked items re-ranked (at least 2k)


@dataclass
class Breaker:
    failures: int = 5                 # consecutive failures of a stage that open its circuit
    cooldown_s: float = 10.0          # how long an open circuit skips the stage


@dataclass
class DecisionLog:
    directory: str | None = None      # None: no decision log
    flush_interval_s: float = 0.5     # rows reach disk at least this often (<= 1 s)
    rotate_rows: int = 100_000        # a file holds at most this many rows


@dataclass
class Arm:
    """One arm of the experiment: a bundle set (overrides of ``serve.bundles``; none:
    the champion's set) with a relative ``weight`` inside the experiment."""

    weight: float = 1.0
    bundles: dict[str, str | None] | None = None          # e.g. {ranker: /path/to/challenger_ranker}
    exploration: dict[str, Exploration] | None = None     # per channel; null: serve.exploration


@dataclass
class HoldbackArm:
    share: float = 0.0                # share of all users held back (by `salt`, global across experiments)
    salt: str = "recsys-holdback"
    serve: str = "champion"           # champion (its bundles, no exploration) | non_personalised


@dataclass
class Guardrails:
    """Automatic rollback of a challenger (see :mod:`recsys.service.experiment`)."""

    enabled: bool = True
    min_requests: int = 300           # decisions per arm (challenger and control) before any check
    check_every: int = 100            # decisions of the challenger between checks
    error_rate_margin: float = 0.02   # roll back when challenger - control error rate > margin (z > 3)
    fallback_rate_margin: float = 0.05  # same for the share of decisions below the chain's first level
    latency_p99_ratio: float = 1.5    # roll back when p99 > ratio * control p99 + margin
    latency_p99_margin_ms: float = 20.0
    latency_window: int = 2000        # p99 over the last n decisions of each arm
    metric_event: str = "click"       # primary metric: these feedback events per decision
    alpha: float = 0.05               # mSPRT level of the primary metric (harm side acts)
    tau_relative: float = 0.2         # mSPRT mixing scale: this share of the pooled metric mean


@dataclass
class Experiment:
    name: str = "serve"
    salt: str = ""                    # assignment hash salt (default: name); keep fixed for the experiment's life
    arms: dict[str, Arm] = field(default_factory=dict)  # first (or `control`) arm = control = the champion
    control: str | None = None
    traffic: float = 1.0              # ramp: share of eligible, non-held-back users in the experiment
    eligible: dict[str, list[str]] = field(default_factory=dict)  # context key -> values (e.g. segment: [low_risk])
    holdback: HoldbackArm = field(default_factory=HoldbackArm)
    guardrails: Guardrails = field(default_factory=Guardrails)


@dataclass
class ServeConfig:
    bundles: BundlePaths = field(default_factory=BundlePaths)
    budgets: Budgets = field(default_factory=Budgets)
    caps: Caps = field(default_factory=Caps)
    diversity: Diversity = field(default_factory=Diversity)
    exposure: ExposureRerank = field(default_factory=ExposureRerank)
    breaker: Breaker = field(default_factory=Breaker)
    decision_log: DecisionLog = field(default_factory=DecisionLog)
    fallback: dict[str, list[str]] = field(default_factory=lambda: {"default": list(LEVELS)})
    n_candidates: int = 200           # ANN candidates retrieved (before filters)
    n_rank: int = 200                 # of those left after filters, the best by ANN score go to the ranker
    level_threads: int = 2            # personalised levels computed at once per worker (more queue, see budgets.queue_ms)
    max_k: int = 100
    max_body_bytes: int = 65536
    recent_items: int = 50            # per-user recent items kept (the seen filter)
    static_items: list[str] = field(default_factory=list)  # last level; empty: catalogue order
    blocked_items: list[str] = field(default_factory=list)
    consent_default: bool = True      # consent of a user who never set it
    consent_list: str | None = None   # Parquet/CSV user_id, granted: applied to the state at start (recsys.features.consent)
    min_confidence: float = 0.0       # personalised level needs max P(click) >= this
    event_weights: dict[str, float] = field(default_factory=lambda: {"view": 1.0, "click": 2.0,
                                                                     "add_to_cart": 3.0, "purchase": 5.0})
    state: str = "memory"             # memory | redis
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_s: float = 0.05
    admin_token_env: str = "RECSYS_ADMIN_TOKEN"
    exploration: dict[str, Exploration] = field(default_factory=dict)  # per channel (+ default)
    experiment: Experiment | None = None

    def chain(self, channel: str) -> list[str]:
        return list(self.fallback.get(channel) or self.fallback.get("default") or LEVELS)


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        return None if where.split(".")[-1] in ("user_item", "user_channel", "user") else cls()
    if not isinstance(data, Mapping):
        raise ServiceConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ServiceConfigError(f"{where}.{unknown[0]}: unknown key (valid: {', '.join(fields)})")
    kw = {}
    for name, value in data.items():
        sub = {"bundles": BundlePaths, "budgets": Budgets, "caps": Caps, "diversity": Diversity,
               "exposure": ExposureRerank,
               "breaker": Breaker, "decision_log": DecisionLog, "user_item": Cap, "user_channel": Cap,
               "user": Cap}.get(name) if cls in (ServeConfig, Caps) else None
        kw[name] = _build(sub, value, f"{where}.{name}") if sub else value
    try:
        return cls(**kw)
    except TypeError as e:
        raise ServiceConfigError(f"{where}: {e}") from None


def _explorations(data: Any, where: str) -> dict[str, Exploration]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ServiceConfigError(f"{where}: expected a mapping channel -> exploration, got {type(data).__name__}")
    out = {}
    for channel, ex in data.items():
        e = _build(Exploration, ex, f"{where}.{channel}")
        problem = e.check(f"{where}.{channel}")
        if problem is None and e.levels is not None and any(lv not in LEVELS for lv in e.levels):
            problem = f"{where}.{channel}.levels: {e.levels}; levels are {', '.join(LEVELS)}"
        if problem:
            raise ServiceConfigError(problem)
        out[str(channel)] = e
    return out


def _experiment(data: Any, bundles: BundlePaths) -> Experiment | None:
    if data is None:
        return None
    w = "serve.experiment"
    if not isinstance(data, Mapping):
        raise ServiceConfigError(f"{w}: expected a mapping, got {type(data).__name__}")
    raw = dict(data)
    arms_raw, hb, gr = raw.pop("arms", None), raw.pop("holdback", None), raw.pop("guardrails", None)
    exp = _build(Experiment, raw, w)
    if not isinstance(arms_raw, Mapping) or len(arms_raw) < 2:
        raise ServiceConfigError(f"{w}.arms: expected >= 2 arms (the first, or `control`, is the champion)")
    for name, a in arms_raw.items():
        if str(name) in ("default", "holdback", "") or not str(name).replace("_", "").replace("-", "").isalnum():
            raise ServiceConfigError(f"{w}.arms.{name}: arm names are letters, digits, _ or -, not default/holdback")
        a = dict(a or {})
        ex = _explorations(a.pop("exploration", None), f"{w}.arms.{name}.exploration") if "exploration" in a \
            else None
        arm = _build(Arm, a, f"{w}.arms.{name}")
        arm.exploration = ex
        if not float(arm.weight) > 0:
            raise ServiceConfigError(f"{w}.arms.{name}.weight: expected > 0")
        if arm.bundles is not None:
            _build(BundlePaths, {**bundles.__dict__, **arm.bundles}, f"{w}.arms.{name}.bundles")
        exp.arms[str(name)] = arm
    if len(exp.arms) > 250:
        raise ServiceConfigError(f"{w}.arms: at most 250 arms")
    exp.holdback = _build(HoldbackArm, hb, f"{w}.holdback")
    exp.guardrails = _build(Guardrails, gr, f"{w}.guardrails")
    exp.salt = str(exp.salt or exp.name)
    if exp.control is not None and exp.control not in exp.arms:
        raise ServiceConfigError(f"{w}.control={exp.control!r}: not an arm ({', '.join(exp.arms)})")
    if not 0 < float(exp.traffic) <= 1:
        raise ServiceConfigError(f"{w}.traffic: expected 0 < value <= 1 (the ramp)")
    if not 0 <= float(exp.holdback.share) < 1:
        raise ServiceConfigError(f"{w}.holdback.share: expected 0 <= value < 1")
    if exp.holdback.serve not in ("champion", "non_personalised"):
        raise ServiceConfigError(f"{w}.holdback.serve={exp.holdback.serve!r}: expected champion or non_personalised")
    if not isinstance(exp.eligible, Mapping) or any(not isinstance(v, (list, tuple)) for v in exp.eligible.values()):
        raise ServiceConfigError(f"{w}.eligible: expected a mapping context key -> list of values")
    g = exp.guardrails
    if int(g.min_requests) < 2 or int(g.check_every) < 1 or int(g.latency_window) < 10:
        raise ServiceConfigError(f"{w}.guardrails.min_requests: expected >= 2 (check_every >= 1, "
                                 f"latency_window >= 10)")
    if not 0 < float(g.alpha) < 1 or not float(g.tau_relative) > 0:
        raise ServiceConfigError(f"{w}.guardrails.alpha: expected 0 < alpha < 1 and tau_relative > 0")
    if g.metric_event not in ("view", "click", "add_to_cart", "purchase"):
        raise ServiceConfigError(f"{w}.guardrails.metric_event={g.metric_event!r}: expected view, click, "
                                 f"add_to_cart or purchase")
    return exp


def mixture_paths(base: BundlePaths, ex: Exploration, where: str) -> dict[str, BundlePaths]:
    """The bundle paths of an exploration's mixture candidates (overrides of ``base``)."""
    return {str(n): _build(BundlePaths, {**base.__dict__, **dict(ov)}, f"{where}.mixture.{n}.bundles")
            for n, ov in (ex.mixture or {}).items()}


def _check_mixtures(cfg: ServeConfig) -> None:
    """Every mixture candidate names valid bundle keys (loaded by the router)."""
    places = [("serve.exploration", cfg.exploration)]
    if cfg.experiment is not None:
        places += [(f"serve.experiment.arms.{a}.exploration", arm.exploration or {})
                   for a, arm in cfg.experiment.arms.items()]
    for where, exs in places:
        for channel, ex in exs.items():
            mixture_paths(cfg.bundles, ex, f"{where}.{channel}")


def serve_config(data: Mapping[str, Any] | None) -> ServeConfig:
    """A checked :class:`ServeConfig` from a mapping."""
    data = dict(data or {})
    exploration, experiment = data.pop("exploration", None), data.pop("experiment", None)
    cfg = _build(ServeConfig, data, "serve")
    cfg.exploration = _explorations(exploration, "serve.exploration")
    cfg.experiment = _experiment(experiment, cfg.bundles)
    _check_mixtures(cfg)
    for channel, chain in cfg.fallback.items():
        bad = [lv for lv in chain if lv not in LEVELS]
        if bad or not chain:
            raise ServiceConfigError(f"serve.fallback.{channel}: {bad or 'empty'}; levels are {', '.join(LEVELS)}")
    if cfg.diversity.method not in ("mmr", "category_caps", "none"):
        raise ServiceConfigError(f"serve.diversity.method={cfg.diversity.method!r}: "
                                 f"expected mmr, category_caps or none")
    e = cfg.exposure
    if not e.weight >= 0 or e.group not in ("category", "item") or e.head < 1:
        raise ServiceConfigError(f"serve.exposure: expected weight >= 0, group category or item and head >= 1, "
                                 f"got weight={e.weight}, group={e.group!r}, head={e.head}")
    if e.weight > 0 and e.group == "category" and cfg.bundles.catalogue is None:
        raise ServiceConfigError("serve.exposure.group=category needs serve.bundles.catalogue (the items' categories)")
    if e.target is not None and (any(float(v) < 0 for v in e.target.values()) or sum(map(float, e.target.values())) <= 0):
        raise ServiceConfigError("serve.exposure.target: expected non-negative shares with a positive sum")
    if cfg.state not in ("memory", "redis"):
        raise ServiceConfigError(f"serve.state={cfg.state!r}: expected memory or redis")
    if not 0 < cfg.decision_log.flush_interval_s <= 1.0:
        raise ServiceConfigError("serve.decision_log.flush_interval_s: expected 0 < value <= 1 (seconds)")
    for name in ("user_item", "user_channel", "user"):
        cap = getattr(cfg.caps, name)
        if cap is not None and (int(cap.limit) < 0 or float(cap.window_s) <= 0):
            raise ServiceConfigError(f"serve.caps.{name}: expected limit >= 0 and window_s > 0")
    if not 1 <= cfg.level_threads <= 256:
        raise ServiceConfigError(f"serve.level_threads: expected 1..256, got {cfg.level_threads}")
    if not 1 <= cfg.max_k <= 1000 or cfg.n_candidates < 1 or cfg.n_rank < 1:
        raise ServiceConfigError("serve.max_k: expected 1..1000; serve.n_candidates, serve.n_rank: expected >= 1")
    b = cfg.bundles
    if not (b.index or b.catalogue or cfg.static_items):
        raise ServiceConfigError("serve: nothing to serve; give bundles.index, bundles.catalogue or static_items")
    return cfg
