"""A seeded synthetic recommendation world whose ground truth is exactly known.

``generate_world(SyntheticConfig(...))`` returns a :class:`SyntheticWorld`: a
clickstream (``events``), user and item side tables, a logged-bandit impression
log, and every latent parameter (``truth``) needed to compute the true click
probability of any (user, item, position), the true value of any slate policy
and the exact next-item distribution of the consumption process.

Ids are decimal strings ``"1".."n_users"`` / ``"1".."n_items"``; the raw integer id
is the row of every truth array (row 0 is padding, never used).

Generative model (numpy only, deterministic for a seed, vectorised over users):

* Items: categories of power-law size; ``V[j] = centroid[cat j] + noise``;
  popularity ``b[j] = -popularity_exponent * log(rank j)`` (Zipf); price lognormal
  by category; 1-3 tags, mostly from the category's own tags.
* Users: group ``g`` (``n_groups``, unequal sizes); each group shifts the category
  distribution from which a user draws 1-3 centroids, mixed with Dirichlet weights
  plus noise (``U[u]``); popularity sensitivity ``beta[u]`` (lower outside g0).
  Optional planted disparity (off by default): ``weak_signal_users`` /
  ``weak_signal_strength``: with that probability each item one set of users
  consumes is uniform over their unconsumed items (see :class:`SyntheticConfig`;
  used by :mod:`recsys.evaluation.fairness_study`).
* Transitions: each item has ``N_SUCCESSORS`` successor items (Gumbel top-k over
  factor similarity + same-category bonus + popularity; mostly same category)
  with probabilities ``proportional to 1/(rank+1)``.
* Consumption (unique items per user, ``seq_len[u]`` of them): with prob
  ``rho = s/(1+s)`` (``s = sequential_strength``, only after the first item) the
  next item is a successor of the source item (the last item, or with prob
  ``LAG_WEIGHTS[1]`` the one before it), chosen ``proportional to
  transition_probs * exp(U[u].V[j])`` among not-yet-consumed successors; otherwise
  (or when none is left) it is drawn ``proportional to exp(U[u].V[j] + beta[u]*b[j])``
  among all unconsumed items. :meth:`SyntheticWorld.next_item_distribution` gives
  this law exactly (static draws use float32 logits, so up to float32 rounding).
  Static draws walk a per-user Plackett-Luce order (Gumbel top-k), skipping
  consumed items, which is exact (see ``generate_sequences``).
* Clicks, views, carts, purchases, sessions, devices and the impression log are
  built in :mod:`recsys.data.synthetic_logs`, which also holds the formulas for
  relevance, click probability and the logging policy.

Sizes: defaults generate in ~0.6 s; ``n_users=100_000, n_items=20_000`` in ~30 s
on 2 cores (dense user x item work runs in blocks on a thread pool, peak RSS
~1.7 GB).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors.numpy import load_file, save_file

from recsys.data.base import LoadedData
from recsys.data.synthetic_logs import (
    blocks,
    build_events,
    build_impressions,
    generate_sequences,
    id_strings,
    logging_probs,
    relevance_matrix,
    relevance_pairs,
    topk_rows,
)
from recsys.utils.io import atomic_path, write_json_atomic

FORMAT = "recsys.synthetic_world/1"
TABLES = ("events", "users", "items", "impressions")
AFFINITY_SCALE, ITEM_NOISE, USER_NOISE, GROUP_SHIFT = 3.0, 0.6, 0.5, 1.2
N_SUCCESSORS, SUCC_AFFINITY, SAME_CATEGORY_BONUS, SUCC_POP = 5, 2.0, 3.0, 1.0
LAG_WEIGHTS = (0.75, 0.25)  # source of a transition: last item / the one before
RELEVANCE_POP_WEIGHT, RELEVANCE_OFFSET = 0.3, -2.5
LOGGER_NOISE, LOGGER_POP_WEIGHT = 0.7, 0.6
AGE_BUCKETS = ("18-24", "25-34", "35-44", "45-54", "55+")
REGIONS = ("north", "south", "east", "west", "central")


@dataclass
class SyntheticConfig:
    """Size and behaviour of the world; every field goes into ``config.json``."""

    n_users: int = 2000
    n_items: int = 1000
    n_categories: int = 12
    n_groups: int = 2
    dim: int = 16
    seq_len_mean: float = 20.0
    min_seq_len: int = 5
    popularity_exponent: float = 1.1
    sequential_strength: float = 2.0
    n_requests: int = 20000
    slate_size: int = 5
    logging_temperature: float = 1.0
    position_bias_power: float = 1.0
    channels: tuple[str, ...] = ("web", "app", "email")
    start_time: float = 1_700_000_000.0
    seed: int = 0
    #: Planted disparity (default off): users whose side-table value matches
    #: ``"column=value"`` (a column of the users table: ``group`` e.g. ``"group=g1"``,
    #: ``age_bucket`` or ``region`` e.g. ``"region=north"``) get a weaker relevance
    #: signal: each item they consume is, with probability ``weak_signal_strength``,
    #: drawn uniformly from their not-yet-consumed items instead of by preference
    #: and transitions (truth ``user_signal_noise``; ``next_item_distribution``
    #: stays exact). ``region`` is drawn independently of behaviour, so
    #: ``"region=..."`` gives a world with exactly one disparity. Off when the
    #: strength is 0: the world is then bit-identical to one generated without
    #: these fields.
    weak_signal_users: str = ""
    weak_signal_strength: float = 0.0

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        checks = {
            "n_users >= 1": self.n_users >= 1,
            "n_categories >= 1 and n_groups >= 1": self.n_categories >= 1 and self.n_groups >= 1,
            "min_seq_len >= 2": self.min_seq_len >= 2,
            "n_items >= max(2 * min_seq_len, n_categories, slate_size + 1)":
                self.n_items >= max(2 * self.min_seq_len, self.n_categories, self.slate_size + 1),
            "slate_size >= 1 and n_requests >= 1": self.slate_size >= 1 and self.n_requests >= 1,
            "logging_temperature > 0": self.logging_temperature > 0,
            "sequential_strength >= 0": self.sequential_strength >= 0,
            "channels non-empty": len(self.channels) >= 1,
            "seed >= 0": self.seed >= 0,
            "0 <= weak_signal_strength < 1": 0.0 <= self.weak_signal_strength < 1.0,
            "weak_signal_users 'column=value' with column in group/age_bucket/region when weak_signal_strength > 0":
                self.weak_signal_strength == 0.0 or weak_signal_spec(self.weak_signal_users) is not None,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"SyntheticConfig: need {', '.join(bad)}")


@dataclass
class SyntheticWorld:
    """Generated tables plus the latent truth (see the module docstring).

    ``events`` are sorted by user (numeric id) then time; the ``click`` events of
    a user, in that order, are the consumed-item sequence (unique items).

    ``impressions`` columns: request_id (int64), user_id, timestamp, position
    (int32, 0-based), item_id, propensity (logging prob of that item at that
    position), click (int8), logging_policy. Slates have no duplicate items and
    the propensities are exact per-position marginals (systematic sampling plus a
    random order, see :func:`recsys.data.synthetic_logs.systematic_slates`): the
    duplicate rate is 0, where independent per-position draws from the uncapped
    softmax would put a duplicate in ~24% of the slates with defaults. The
    logging distribution is the same at every position: a softmax capped at
    ``1 / slate_size`` (the cap binds for ~15% of users with defaults);
    ``logging_distribution`` returns the capped law, i.e. the propensities.
    Clicks are independent across positions given the slate, so item-position
    estimators are exact; the joint slate probability is not the product of the
    propensities.

    ``truth`` (row 0 of per-user / per-item arrays is padding): user_factors
    (n_users+1, dim), item_factors (n_items+1, dim), item_bias, item_category,
    item_price, category_centroids (C, dim), user_group (-1 at row 0),
    group_category_shift (G, C), user_pop_sensitivity, user_n_devices, seq_len,
    transitions / transition_probs (n_items+1, K), sequential_mix (1,),
    lag_weights (2,), position_bias (slate_size,), relevance_pop_weight (1,),
    relevance_offset (1,), logger_user_factors, logger_item_factors,
    logger_item_bias; only with a planted disparity: user_signal_noise (n_users+1,).
    """

    config: SyntheticConfig
    events: pa.Table
    users: pa.Table
    items: pa.Table
    impressions: pa.Table
    truth: dict[str, np.ndarray] = field(repr=False)

    def relevance(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """True P(click | examined), in (0, 1), for broadcastable int id arrays."""
        return relevance_pairs(self.truth, user, item)

    def click_probability(self, user: np.ndarray, item: np.ndarray, position: np.ndarray) -> np.ndarray:
        """True P(click) = position_bias[position] * relevance(user, item)."""
        pos = np.asarray(position, dtype=np.int64)
        return self.truth["position_bias"][pos] * self.relevance(user, item)

    def logging_distribution(self, user: np.ndarray) -> np.ndarray:
        """Logging policy per request: (len(user), n_items + 1), column 0 = 0,
        rows sum to 1, identical at every slate position."""
        u = np.asarray(user, dtype=np.int64).ravel()
        cfg = self.config
        out = np.empty((len(u), cfg.n_items + 1))
        for s, e in blocks(len(u), cfg.n_items + 1):
            out[s:e] = logging_probs(self.truth, u[s:e], cfg.logging_temperature, cfg.slate_size)
        return out

    def policy_value(self, policy_probs: np.ndarray, users: np.ndarray) -> float:
        """Exact expected clicks per slate, averaged over the rows.

        ``policy_probs``: (n, slate_size, n_items + 1) per-position distributions,
        or (n, n_items + 1) meaning the same at every position; ``users``: (n,).
        Clicks are independent given the slate (examination hypothesis), so the
        value only depends on the per-position marginals:
        ``mean_n sum_k position_bias[k] * sum_j pi[n, k, j] * relevance(u_n, j)``.
        """
        p = np.asarray(policy_probs, dtype=np.float64)
        u = np.asarray(users, dtype=np.int64).ravel()
        pb, m = self.truth["position_bias"], self.config.n_items + 1
        ok = p.ndim in (2, 3) and p.shape[0] == len(u) and p.shape[-1] == m and (p.ndim == 2 or p.shape[1] == len(pb))
        if not ok:
            raise ValueError(f"policy_probs shape {p.shape}: expected ({len(u)}, {len(pb)}, {m}) or ({len(u)}, {m})")
        total = 0.0
        for s, e in blocks(len(u), m):
            rel = relevance_matrix(self.truth, u[s:e])  # (b, m)
            if p.ndim == 2:
                total += pb.sum() * float((p[s:e] * rel).sum())
            else:
                total += float(((p[s:e] * rel[:, None, :]).sum(axis=2) @ pb).sum())
        return total / max(len(u), 1)

    def next_item_distribution(self, user: int, history: np.ndarray) -> np.ndarray:
        """Exact law of the next consumed item of ``user`` after the consumed
        items ``history`` (in order): (n_items + 1,), column 0 and consumed = 0."""
        t = self.truth
        h = np.asarray(history, dtype=np.int64)
        static = t["item_factors"] @ t["user_factors"][user] + t["user_pop_sensitivity"][user] * t["item_bias"]
        static = np.exp(static - static.max())  # (n_items + 1,)
        static[0] = 0.0
        static[h] = 0.0
        static /= static.sum()
        noise = float(t["user_signal_noise"][user]) if "user_signal_noise" in t else 0.0
        if noise > 0:
            uniform = np.ones(len(static))
            uniform[0] = 0.0
            uniform[h] = 0.0
            uniform /= uniform.sum()
            return (1.0 - noise) * self._preference_law(user, h, static) + noise * uniform
        return self._preference_law(user, h, static)

    def _preference_law(self, user: int, h: np.ndarray, static: np.ndarray) -> np.ndarray:
        t = self.truth
        if len(h) == 0:
            return static
        rho = t["sequential_mix"][0]
        out = (1.0 - rho) * static
        lag = t["lag_weights"]
        sources = [(h[-1], 1.0)] if len(h) == 1 else [(h[-1], lag[0]), (h[-2], lag[1])]
        for src, lam in sources:
            succ = t["transitions"][src]
            w = t["transition_probs"][src] * np.exp(t["item_factors"][succ] @ t["user_factors"][user])
            w = w * ~np.isin(succ, h)
            if w.sum() > 0:
                out[succ] += rho * lam * w / w.sum()
            else:
                out += rho * lam * static
        return out

    def as_loaded_data(self) -> LoadedData:
        """The world as a loader result; impressions, truth and the world in extras."""
        return LoadedData(self.events, self.items, self.users, "unix",
                          {"impressions": self.impressions, "truth": self.truth, "world": self})

    def save(self, directory: str | Path) -> None:
        """Parquet tables, ``truth.safetensors`` and ``config.json`` (written last),
        each file atomically; no pickle."""
        d = Path(directory)
        for name in TABLES:
            with atomic_path(d / f"{name}.parquet") as tmp:
                pq.write_table(getattr(self, name), tmp)
        with atomic_path(d / "truth.safetensors") as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in self.truth.items()}, str(tmp))
        write_json_atomic(d / "config.json", {"format": FORMAT, "config": asdict(self.config)})

    @classmethod
    def load(cls, directory: str | Path) -> "SyntheticWorld":
        d = Path(directory)
        meta = json.loads((d / "config.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{d / 'config.json'}: format {meta.get('format')!r}, expected {FORMAT!r}")
        tables = {name: pq.read_table(d / f"{name}.parquet") for name in TABLES}
        return cls(SyntheticConfig(**meta["config"]), truth=load_file(str(d / "truth.safetensors")), **tables)


WEAK_SIGNAL_COLUMNS = ("group", "age_bucket", "region")


def weak_signal_spec(spec: str) -> tuple[str, str] | None:
    """``"column=value"`` -> ``(column, value)``; ``None`` when malformed."""
    column, sep, value = spec.partition("=")
    if not sep or column.strip() not in WEAK_SIGNAL_COLUMNS or not value.strip():
        return None
    return column.strip(), value.strip()


def _weak_signal_noise(cfg: SyntheticConfig, users: pa.Table) -> np.ndarray:
    """Per user, the probability that a consumed item is uniform noise:
    ``weak_signal_strength`` for the ``weak_signal_users``, else 0. (n_users + 1,)."""
    spec = weak_signal_spec(cfg.weak_signal_users)
    assert spec is not None
    column, value = spec
    values = users.column(column).to_pylist()
    members = np.asarray(values, dtype=object) == value
    if not members.any():
        raise ValueError(f"SyntheticConfig: weak_signal_users={cfg.weak_signal_users!r} matches no user "
                         f"(values: {sorted(set(values))})")
    noise = np.zeros(cfg.n_users + 1)
    noise[1:][members] = cfg.weak_signal_strength
    return noise


def _rng(cfg: SyntheticConfig, stream: int) -> np.random.Generator:
    """Independent generator per component, so components don't shift each other."""
    return np.random.default_rng([cfg.seed, stream])


def _category_counts(n_items: int, n_categories: int) -> np.ndarray:
    """Power-law category sizes (share proportional to 1/rank), each >= 1: (C,)."""
    share = 1.0 / np.arange(1, n_categories + 1)
    raw = share / share.sum() * (n_items - n_categories)
    counts = np.floor(raw).astype(np.int64) + 1
    counts[np.argsort(-(raw - np.floor(raw)), kind="stable")[: n_items - counts.sum()]] += 1
    return counts


def _make_items(cfg: SyntheticConfig, truth: dict[str, np.ndarray], rng: np.random.Generator) -> pa.Table:
    """Item latents (into ``truth``) and the item side table."""
    n, c, d = cfg.n_items, cfg.n_categories, cfg.dim
    counts = _category_counts(n, c)
    cat = np.zeros(n + 1, dtype=np.int64)
    cat[1:] = rng.permutation(np.repeat(np.arange(c), counts))
    centroids = rng.standard_normal((c, d)) / np.sqrt(d)
    v = np.zeros((n + 1, d))
    v[1:] = centroids[cat[1:]] + ITEM_NOISE * rng.standard_normal((n, d)) / np.sqrt(d)
    bias = np.zeros(n + 1)
    bias[1:] = -cfg.popularity_exponent * np.log(rng.permutation(n) + 1.0)
    price = np.zeros(n + 1)
    log_price = np.log(30.0) + 0.6 * rng.standard_normal(c)
    price[1:] = np.round(np.maximum(np.exp(log_price[cat[1:]] + 0.4 * rng.standard_normal(n)), 0.5), 2)
    truth.update(category_centroids=centroids, item_category=cat, item_factors=v, item_bias=bias, item_price=price)
    # tags: 3 per category + 8 generic; own-category tags usually come first
    n_tags = 3 * c + 8
    tag_cat = np.concatenate([np.repeat(np.arange(c), 3), np.full(8, -1)])
    score = rng.random((n, n_tags)) + 0.7 * (tag_cat[None, :] == cat[1:, None])
    chosen = np.argsort(-score, axis=1)[:, :3]
    n_item_tags = rng.choice(3, n, p=[0.4, 0.35, 0.25]) + 1
    keep = np.arange(3)[None, :] < n_item_tags[:, None]
    offsets = np.concatenate([[0], np.cumsum(n_item_tags)]).astype(np.int32)
    tags = pa.ListArray.from_arrays(pa.array(offsets), id_strings(n_tags, "t").take(pa.array(chosen[keep])))
    return pa.table({
        "item_id": id_strings(n + 1).slice(1),
        "category": id_strings(c, "c").take(pa.array(cat[1:])),
        "price": pa.array(price[1:]),
        "tags": tags,
    })


def _make_users(cfg: SyntheticConfig, truth: dict[str, np.ndarray], rng: np.random.Generator) -> pa.Table:
    """User latents, groups and sequence lengths (into ``truth``) and the user table."""
    n, c, d, g = cfg.n_users, cfg.n_categories, cfg.dim, cfg.n_groups
    group_p = 1.0 / np.arange(1, g + 1) ** 0.8
    group = rng.choice(g, n, p=group_p / group_p.sum())
    shift = GROUP_SHIFT * rng.standard_normal((g, c))
    cat_logits = np.log(_category_counts(cfg.n_items, c))[None, :] + shift  # (G, C)
    cat_p = np.exp(cat_logits - cat_logits.max(axis=1, keepdims=True))
    cum = np.cumsum(cat_p / cat_p.sum(axis=1, keepdims=True), axis=1)[group]  # (n, C)
    comp = np.minimum((cum[:, None, :] < rng.random((n, 3))[:, :, None]).sum(axis=2), c - 1)  # (n, 3)
    n_mix = 1 + rng.binomial(2, 0.4, n)
    w = rng.standard_gamma(1.0, (n, 3)) * (np.arange(3)[None, :] < n_mix[:, None])
    w /= w.sum(axis=1, keepdims=True)
    u = np.zeros((n + 1, d))
    mix = np.einsum("nk,nkd->nd", w, truth["category_centroids"][comp])
    u[1:] = AFFINITY_SCALE * (mix + USER_NOISE * rng.standard_normal((n, d)) / np.sqrt(d))
    beta = np.zeros(n + 1)
    beta[1:] = np.where(group == 0, 1.0, 0.7) * np.exp(0.15 * rng.standard_normal(n))
    seq_len = np.zeros(n + 1, dtype=np.int64)
    seq_len[1:] = _sequence_lengths(cfg, rng)
    n_dev = np.zeros(n + 1, dtype=np.int64)
    n_dev[1:] = 1 + rng.binomial(2, 0.35, n)
    user_group = np.concatenate([[-1], group]).astype(np.int64)
    truth.update(user_factors=u, user_group=user_group, group_category_shift=shift,
                 user_pop_sensitivity=beta, seq_len=seq_len, user_n_devices=n_dev)
    age_p = np.exp(np.log([0.2, 0.3, 0.25, 0.15, 0.1])[None, :] + 0.5 * rng.standard_normal((g, 5)))
    age_cum = np.cumsum(age_p / age_p.sum(axis=1, keepdims=True), axis=1)[group]
    age = np.minimum((age_cum < rng.random(n)[:, None]).sum(axis=1), 4)
    region = rng.choice(len(REGIONS), n, p=[0.3, 0.25, 0.2, 0.15, 0.1])
    return pa.table({
        "user_id": id_strings(n + 1).slice(1),
        "group": id_strings(g, "g").take(pa.array(group)),
        "age_bucket": pa.array(AGE_BUCKETS).take(pa.array(age)),
        "region": pa.array(REGIONS).take(pa.array(region)),
        "n_devices": pa.array(n_dev[1:]),
    })


def _sequence_lengths(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """``min_seq_len + round(lognormal)`` with mean about ``seq_len_mean``, capped
    at ``min(n_items // 2, 5 * seq_len_mean)``: (n_users,) int64."""
    cap = max(cfg.min_seq_len, min(cfg.n_items // 2, int(5 * cfg.seq_len_mean)))
    extra = max(cfg.seq_len_mean - cfg.min_seq_len, 1e-9)
    sigma = 0.8
    raw = np.exp(np.log(extra) - sigma**2 / 2 + sigma * rng.standard_normal(cfg.n_users))
    return np.minimum(cfg.min_seq_len + np.round(raw).astype(np.int64), cap)


def _make_transitions(cfg: SyntheticConfig, truth: dict[str, np.ndarray], seed_words: tuple[int, ...]) -> None:
    """Successor items (n_items+1, K) and their probabilities (rows 0 = padding)."""
    n, k = cfg.n_items, min(N_SUCCESSORS, cfg.n_items - 1)
    v = truth["item_factors"].astype(np.float32)
    cat, bias = truth["item_category"], truth["item_bias"].astype(np.float32)

    def logits(rows: np.ndarray) -> np.ndarray:
        out = SUCC_AFFINITY * (v[rows] @ v[1:].T) + SUCC_POP * bias[None, 1:]
        out += np.float32(SAME_CATEGORY_BONUS) * (cat[rows][:, None] == cat[None, 1:])
        out[np.arange(len(rows)), rows - 1] = -np.inf  # no self-transition
        return out

    succ = topk_rows(n, n, logits, np.full(n + 1, k), seed_words)
    probs = np.zeros((n + 1, k))
    probs[1:] = 1.0 / np.arange(1, k + 1)
    probs[1:] /= probs[1:].sum(axis=1, keepdims=True)
    truth.update(transitions=succ, transition_probs=probs)


def _make_logger(cfg: SyntheticConfig, truth: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """Noisy copies of the true factors plus a popularity term: the logger is
    decent but not optimal."""
    u, v = truth["user_factors"], truth["item_factors"]
    d = cfg.dim
    lu = u + LOGGER_NOISE * AFFINITY_SCALE * rng.standard_normal(u.shape) / np.sqrt(d)
    lv = v + LOGGER_NOISE * rng.standard_normal(v.shape) / np.sqrt(d)
    lu[0], lv[0] = 0.0, 0.0
    truth.update(logger_user_factors=lu, logger_item_factors=lv,
                 logger_item_bias=LOGGER_POP_WEIGHT * truth["item_bias"])


def generate_world(config: SyntheticConfig) -> SyntheticWorld:
    """Generate the whole world; deterministic for ``config`` (incl. its seed)."""
    cfg = config
    truth: dict[str, Any] = {}
    items = _make_items(cfg, truth, _rng(cfg, 1))
    users = _make_users(cfg, truth, _rng(cfg, 2))
    if cfg.weak_signal_strength > 0:  # only then: the default world's truth has no such key
        truth["user_signal_noise"] = _weak_signal_noise(cfg, users)
    _make_transitions(cfg, truth, (cfg.seed, 3))
    _make_logger(cfg, truth, _rng(cfg, 4))
    rho = cfg.sequential_strength / (1.0 + cfg.sequential_strength)
    truth.update(
        position_bias=1.0 / (np.arange(cfg.slate_size) + 1.0) ** cfg.position_bias_power,
        sequential_mix=np.array([rho]), lag_weights=np.array(LAG_WEIGHTS),
        relevance_pop_weight=np.array([RELEVANCE_POP_WEIGHT]), relevance_offset=np.array([RELEVANCE_OFFSET]),
    )
    seq = generate_sequences(truth, rho, (cfg.seed, 5), noise=truth.get("user_signal_noise"))
    lens = truth["seq_len"]
    seq_user, seq_step = np.nonzero(np.arange(seq.shape[1])[None, :] < lens[:, None])
    events, first_ts, last_ts = build_events(cfg, truth, seq_user, seq[seq_user, seq_step], seq_step, _rng(cfg, 6))
    impressions = build_impressions(cfg, truth, first_ts, last_ts, _rng(cfg, 7))
    return SyntheticWorld(cfg, events, users, items, impressions, truth)
