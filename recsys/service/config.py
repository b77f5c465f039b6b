"""The serving config: which bundles, stage budgets, caps, fallback chains, diversity.

Built from a plain mapping (``recsys serve`` passes the composed Hydra config as a
dict; tests pass dicts). An unknown key, a wrong type or an out-of-range value is
one :class:`ServiceConfigError` line naming the key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

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
    """Per-stage time budgets in milliseconds; a stage past its budget drops a level."""

    state_ms: float = 50.0
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
class Breaker:
    failures: int = 5                 # consecutive failures of a stage that open its circuit
    cooldown_s: float = 10.0          # how long an open circuit skips the stage


@dataclass
class DecisionLog:
    directory: str | None = None      # None: no decision log
    flush_interval_s: float = 0.5     # rows reach disk at least this often (<= 1 s)
    rotate_rows: int = 100_000        # a file holds at most this many rows


@dataclass
class ServeConfig:
    bundles: BundlePaths = field(default_factory=BundlePaths)
    budgets: Budgets = field(default_factory=Budgets)
    caps: Caps = field(default_factory=Caps)
    diversity: Diversity = field(default_factory=Diversity)
    breaker: Breaker = field(default_factory=Breaker)
    decision_log: DecisionLog = field(default_factory=DecisionLog)
    fallback: dict[str, list[str]] = field(default_factory=lambda: {"default": list(LEVELS)})
    n_candidates: int = 200           # ANN candidates retrieved (before filters)
    n_rank: int = 200                 # of those left after filters, the best by ANN score go to the ranker
    max_k: int = 100
    max_body_bytes: int = 65536
    recent_items: int = 50            # per-user recent items kept (the seen filter)
    static_items: list[str] = field(default_factory=list)  # last level; empty: catalogue order
    blocked_items: list[str] = field(default_factory=list)
    consent_default: bool = True      # consent of a user who never set it
    min_confidence: float = 0.0       # personalised level needs max P(click) >= this
    event_weights: dict[str, float] = field(default_factory=lambda: {"view": 1.0, "click": 2.0,
                                                                     "add_to_cart": 3.0, "purchase": 5.0})
    state: str = "memory"             # memory | redis
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_s: float = 0.05
    admin_token_env: str = "RECSYS_ADMIN_TOKEN"

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
               "breaker": Breaker, "decision_log": DecisionLog, "user_item": Cap, "user_channel": Cap,
               "user": Cap}.get(name) if cls in (ServeConfig, Caps) else None
        kw[name] = _build(sub, value, f"{where}.{name}") if sub else value
    try:
        return cls(**kw)
    except TypeError as e:
        raise ServiceConfigError(f"{where}: {e}") from None


def serve_config(data: Mapping[str, Any] | None) -> ServeConfig:
    """A checked :class:`ServeConfig` from a mapping."""
    cfg = _build(ServeConfig, dict(data or {}), "serve")
    for channel, chain in cfg.fallback.items():
        bad = [lv for lv in chain if lv not in LEVELS]
        if bad or not chain:
            raise ServiceConfigError(f"serve.fallback.{channel}: {bad or 'empty'}; levels are {', '.join(LEVELS)}")
    if cfg.diversity.method not in ("mmr", "category_caps", "none"):
        raise ServiceConfigError(f"serve.diversity.method={cfg.diversity.method!r}: "
                                 f"expected mmr, category_caps or none")
    if cfg.state not in ("memory", "redis"):
        raise ServiceConfigError(f"serve.state={cfg.state!r}: expected memory or redis")
    if not 0 < cfg.decision_log.flush_interval_s <= 1.0:
        raise ServiceConfigError("serve.decision_log.flush_interval_s: expected 0 < value <= 1 (seconds)")
    for name in ("user_item", "user_channel", "user"):
        cap = getattr(cfg.caps, name)
        if cap is not None and (int(cap.limit) < 0 or float(cap.window_s) <= 0):
            raise ServiceConfigError(f"serve.caps.{name}: expected limit >= 0 and window_s > 0")
    if not 1 <= cfg.max_k <= 1000 or cfg.n_candidates < 1 or cfg.n_rank < 1:
        raise ServiceConfigError("serve.max_k: expected 1..1000; serve.n_candidates, serve.n_rank: expected >= 1")
    b = cfg.bundles
    if not (b.index or b.catalogue or cfg.static_items):
        raise ServiceConfigError("serve: nothing to serve; give bundles.index, bundles.catalogue or static_items")
    return cfg
