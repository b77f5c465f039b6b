"""Behaviour of the synthetic world: ground-truth formulas, consumption
sequences, clickstream and impression logs.

Plain functions over the ``truth`` dict of :mod:`recsys.data.synthetic` (numpy +
pyarrow only). Everything is vectorised over events/requests; dense
``rows x items`` work is done in blocks of at most :data:`DENSE_BLOCK` elements, so
memory stays bounded at any catalogue size.

Truth formulas (``u`` user, ``j`` item, raw integer ids = array rows, row 0 padding):

* relevance ``P(click | examined) = sigmoid(U[u].V[j] + eta * beta[u] * b[j] + c)``
  with ``eta = relevance_pop_weight``, ``c = relevance_offset``, ``b = item_bias``,
  ``beta = user_pop_sensitivity``;
* ``P(click at position k) = position_bias[k] * relevance`` (examination hypothesis);
* logging policy: ``softmax((LU[u].LV[j] + lb[j]) / temperature)`` over items
  ``1..n_items`` (a noisy copy of the true factors plus a stronger popularity term),
  then capped at ``1 / slate_size`` by water-filling (:func:`cap_probs`) so that
  slates can be drawn without duplicates with exact per-position marginals
  (:func:`systematic_slates`).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.schema import EventType, conform_events

#: Largest dense block (rows x items) materialised at once.
DENSE_BLOCK = 1 << 21
#: Pairs per block in gathered dot products.
PAIR_BLOCK = 1 << 17

DAY = 86_400.0
HISTORY_DAYS = 90.0
SESSION_GAP = 1_800.0  # a gap above 30 minutes starts a new session
P_NEW_SESSION = 0.4  # chance that a consumed item opens a new session
BROWSE_MEAN = 1.2  # Poisson mean of non-clicked views before each consumed item
CART_RATE = 0.6  # P(add_to_cart | click) = CART_RATE * relevance
PURCHASE_RATE, PRICE_SCALE = 0.8, 50.0  # P(purchase | cart) = RATE / (1 + price / SCALE)
DWELL_MEDIAN, DWELL_AFFINITY, DWELL_SIGMA, DWELL_MAX = 25.0, 0.35, 0.6, 1_200.0
# gap (seconds) from an event to the next one in its session, by kind:
# browse view: dwell + U(lo, hi); consumed view: dwell * U(lo, hi); others U(lo, hi)
_KINDS = ("view", "view", "click", "add_to_cart", "purchase")
_GAP_LO = np.array([1.0, 0.2, 5.0, 10.0, 5.0])
_GAP_HI = np.array([20.0, 0.9, 90.0, 240.0, 60.0])
LOGGING_POLICY = "softmax_noisy_v1"


def blocks(n_rows: int, n_cols: int, budget: int = DENSE_BLOCK) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` row ranges whose ``rows x n_cols`` fits ``budget``."""
    step = max(1, budget // max(n_cols, 1))
    return [(s, min(s + step, n_rows)) for s in range(0, n_rows, step)]


def pair_dot(a: np.ndarray, ia: np.ndarray, b: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """``(a[ia] * b[ib]).sum(-1)`` for 1-d index arrays (N,), in blocks -> (N,)."""
    out = np.empty(len(ia), dtype=np.float64)
    for s, e in blocks(len(ia), 1, PAIR_BLOCK):
        out[s:e] = np.einsum("nd,nd->n", a[ia[s:e]], b[ib[s:e]])
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for any x


def relevance_pairs(truth: dict[str, np.ndarray], user: Any, item: Any) -> np.ndarray:
    """True ``P(click | examined)`` for broadcastable int arrays -> broadcast shape."""
    u, j = np.broadcast_arrays(np.asarray(user, dtype=np.int64), np.asarray(item, dtype=np.int64))
    shape, u, j = u.shape, u.ravel(), j.ravel()
    logit = pair_dot(truth["user_factors"], u, truth["item_factors"], j)
    logit += truth["relevance_pop_weight"][0] * truth["user_pop_sensitivity"][u] * truth["item_bias"][j]
    return sigmoid(logit + truth["relevance_offset"][0]).reshape(shape)


def relevance_matrix(truth: dict[str, np.ndarray], users: np.ndarray) -> np.ndarray:
    """True relevance of every item for each user: (n, n_items + 1), column 0 = 0."""
    u = np.asarray(users, dtype=np.int64)
    eta = truth["relevance_pop_weight"][0]
    logit = truth["user_factors"][u] @ truth["item_factors"].T  # (n, n_items+1)
    logit += (eta * truth["user_pop_sensitivity"][u])[:, None] * truth["item_bias"][None, :]
    rel = sigmoid(logit + truth["relevance_offset"][0])
    rel[:, 0] = 0.0
    return rel


def cap_probs(p: np.ndarray, cap: float) -> np.ndarray:
    """Water-fill rows of ``p`` (n, m; rows sum to 1, all > 0) so no entry exceeds
    ``cap``: capped entries become ``cap``, the rest keep their ratios. (n, m)."""
    p = p.copy()
    rows = np.flatnonzero(p.max(axis=1) > cap)
    if len(rows) == 0:
        return p
    sub = p[rows]
    capped = np.zeros(sub.shape, dtype=bool)
    for _ in range(int(np.ceil(1.0 / cap)) + 1):
        new = ~capped & (sub > cap * (1.0 + 1e-12))
        if not new.any():
            break
        capped |= new
        free_mass = 1.0 - cap * capped.sum(axis=1)
        free_sum = np.where(capped, 0.0, sub).sum(axis=1)
        sub = np.where(capped, cap, sub * (free_mass / free_sum)[:, None])
    p[rows] = sub
    return p


def logging_probs(truth: dict[str, np.ndarray], users: np.ndarray, temperature: float,
                  slate_size: int) -> np.ndarray:
    """Logging distribution per request: (n, n_items + 1), column 0 = 0, rows sum to 1."""
    u = np.asarray(users, dtype=np.int64)
    lv = truth["logger_item_factors"][1:]
    logits = (truth["logger_user_factors"][u] @ lv.T + truth["logger_item_bias"][1:]) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    out = np.zeros((len(u), lv.shape[0] + 1))
    out[:, 1:] = cap_probs(p, 1.0 / slate_size)
    return out


def systematic_slates(p: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Draw a ``k``-item slate per row of ``p`` (n, m+1; column 0 = 0, entries
    <= 1/k) with no duplicate and ``P(item j at position q) = p[j]`` exactly.

    Systematic (Madow) sampling: item ``j`` owns an interval of length ``k p[j]
    <= 1`` on ``[0, k)``; the points ``U, U+1, ..., U+k-1`` hit ``k`` distinct items,
    each with probability ``k p[j]``. A uniformly random order of the ``k`` hits
    then gives every position the marginal ``k p[j] / k = p[j]``. Returns (n, k)
    raw item ids.
    """
    n, m = p.shape
    cum = np.cumsum(p * k, axis=1)
    cum[:, -1] = k  # guard against rounding at the right end
    base = (np.arange(n, dtype=np.float64) * k)[:, None]
    points = base + rng.random((n, 1)) + np.arange(k)[None, :]  # (n, k)
    flat = np.searchsorted((cum + base).ravel(), points.ravel(), side="right")
    cols = flat.reshape(n, k) - (np.arange(n) * m)[:, None]
    order = np.argsort(rng.random((n, k)), axis=1)
    return np.take_along_axis(np.minimum(cols, m - 1), order, axis=1)


def id_strings(n: int, prefix: str = "") -> pa.Array:
    """``[prefix + str(i) for i in range(n)]`` as an Arrow string array."""
    s = pc.cast(pa.array(np.arange(n, dtype=np.int64)), pa.string())
    return pc.binary_join_element_wise(prefix, s, "") if prefix else s


def gumbel_topk(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Plackett-Luce sample of ``k`` columns without replacement per row, in draw
    order: (r, m) float32 logits (overwritten) -> (r, k) column indices. Keys
    ``exp(l) / E`` with ``E ~ Exp(1)`` order like ``l + Gumbel``."""
    m = logits.shape[1]
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    noise = rng.standard_exponential(logits.shape, dtype=np.float32)
    noise += np.float32(1e-30)  # an exact 0 would give an infinite key
    np.divide(logits, noise, out=logits)
    top = np.argpartition(logits, m - k, axis=1)[:, m - k:]
    order = np.argsort(-np.take_along_axis(logits, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def topk_rows(n_rows: int, n_cols: int, logits_fn: Callable[[np.ndarray], np.ndarray], ks: np.ndarray,
               seed_words: tuple[int, ...]) -> np.ndarray:
    """Gumbel top-``ks[row]`` for rows ``1..n_rows`` of ``logits_fn(rows) -> (r,
    n_cols) float32``, block by block on a thread pool (numpy releases the GIL);
    block ``i`` uses the generator ``seed_words + (i,)``, so the result does not
    depend on scheduling. Returns (n_rows + 1, max k) raw ids (column + 1), 0-padded."""
    out = np.zeros((n_rows + 1, int(ks.max())), dtype=np.int64)

    def work(block: tuple[int, tuple[int, int]]) -> None:
        i, (s, e) = block
        rows = np.arange(s, e) + 1
        k = int(ks[rows].max())
        out[rows, :k] = gumbel_topk(logits_fn(rows), k, np.random.default_rng([*seed_words, i])) + 1

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(work, enumerate(blocks(n_rows, n_cols))))
    return out


def static_prefix(truth: dict[str, np.ndarray], seed_words: tuple[int, ...]) -> np.ndarray:
    """Per user, a Plackett-Luce order of the first ``seq_len[u]`` items under the
    static weights ``exp(U.V + beta b)``: (n_users+1, max_len) raw ids, 0-padded."""
    lens = truth["seq_len"]
    u32, v32 = truth["user_factors"].astype(np.float32), truth["item_factors"][1:].astype(np.float32)
    beta, bias = truth["user_pop_sensitivity"].astype(np.float32), truth["item_bias"][1:].astype(np.float32)

    def logits(rows: np.ndarray) -> np.ndarray:
        return u32[rows] @ v32.T + beta[rows, None] * bias[None, :]

    return topk_rows(len(lens) - 1, len(bias), logits, lens, seed_words)


def generate_sequences(truth: dict[str, np.ndarray], rho: float, seed_words: tuple[int, ...],
                       noise: np.ndarray | None = None) -> np.ndarray:
    """Consumed items per user: (n_users+1, max_len) raw ids, 0 beyond ``seq_len``.

    One vectorised step per position; users sorted by length so that the active
    users at step ``t`` are a prefix of the rows. A step follows a transition
    with prob ``rho`` (see :mod:`recsys.data.synthetic`), else takes the next
    not-yet-consumed item of the user's Plackett-Luce order
    (:func:`static_prefix`). That is an exact draw from the static weights
    restricted to the unconsumed items: every earlier static pick was the
    Gumbel argmax of its then-available set, which only tells the later keys
    that they lie below a common threshold, and the argmax of Gumbels is
    independent of their max. At most ``seq_len[u]`` entries of the order are
    ever examined, so a prefix of that length suffices.

    ``noise`` (n_users+1,) or ``None``: per user, the probability that a step
    instead takes a uniformly random not-yet-consumed item (a planted weak
    signal); its draws come from a separate generator, so ``None`` (or all
    zeros) leaves every other draw, and the result, unchanged.
    """
    lens = truth["seq_len"]
    order = np.argsort(-lens[1:], kind="stable") + 1  # user ids, longest first
    prefix, ls = static_prefix(truth, (*seed_words, 0))[order], lens[order]
    rng = np.random.default_rng([*seed_words, 1])
    uf, vf = truth["user_factors"][order], truth["item_factors"]
    succ_all, tprob = truth["transitions"], truth["transition_probs"]
    seq = np.zeros((len(order), int(ls.max())), dtype=np.int64)
    ptr = np.zeros(len(order), dtype=np.int64)
    noisy_users = noise is not None and bool(np.any(noise > 0))
    noise_rng = np.random.default_rng([*seed_words, 2]) if noisy_users else None
    n_items = vf.shape[0] - 1
    for t in range(seq.shape[1]):
        m = int((ls > t).sum())
        r_follow, r_lag, r_pick = rng.random(m), rng.random(m), 1.0 - rng.random(m)
        hist, choice = seq[:m, :t], np.zeros(m, dtype=np.int64)
        noisy = np.zeros(m, dtype=bool)
        if noise_rng is not None:
            assert noise is not None
            noisy = noise_rng.random(m) < noise[order[:m]]
            rows = np.flatnonzero(noisy)
            cand = noise_rng.integers(1, n_items + 1, len(rows))
            pending = np.arange(len(rows))
            while len(pending):  # uniform over the unconsumed items, by rejection
                used = (hist[rows[pending]] == cand[pending][:, None]).any(axis=1)
                pending = pending[used]
                cand[pending] = noise_rng.integers(1, n_items + 1, len(pending))
            choice[rows] = cand
            r_follow = np.where(noisy, np.inf, r_follow)  # noisy steps follow no transition
        if t >= 1:
            src = seq[:m, t - 1]
            if t >= 2:
                src = np.where(r_lag < truth["lag_weights"][1], seq[:m, t - 2], src)
            f = np.flatnonzero(r_follow < rho)
            succ = succ_all[src[f]]  # (F, K)
            avail = ~(hist[f][:, :, None] == succ[:, None, :]).any(axis=1)
            w = tprob[src[f]] * np.exp(np.einsum("fd,fkd->fk", uf[f], vf[succ])) * avail
            cum = np.cumsum(w, axis=1)
            pick = np.minimum((cum < (r_pick[f] * cum[:, -1])[:, None]).sum(axis=1), succ.shape[1] - 1)
            ok = cum[:, -1] > 0
            choice[f[ok]] = succ[ok, pick[ok]]
        static = np.flatnonzero(choice == 0)
        cand = prefix[static, ptr[static]]
        pending = np.arange(len(static))
        while len(pending):  # skip items already consumed through transitions
            used = (hist[static[pending]] == cand[pending][:, None]).any(axis=1)
            pending = pending[used]
            ptr[static[pending]] += 1
            cand[pending] = prefix[static[pending], ptr[static[pending]]]
        choice[static] = cand
        ptr[static] += 1
        seq[:m, t] = choice
    out = np.zeros((len(lens), seq.shape[1]), dtype=np.int64)
    out[order] = seq
    return out


def _browse_items(truth: dict[str, np.ndarray], anchor: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Viewed-but-not-necessarily-clicked items: half a successor of ``anchor`` (the
    item about to be consumed), half a popularity draw. (N,) -> (N,)."""
    n = len(anchor)
    succ, tp = truth["transitions"][anchor], truth["transition_probs"][anchor]
    k = (np.cumsum(tp, axis=1) < rng.random(n)[:, None]).sum(axis=1)
    similar = succ[np.arange(n), np.minimum(k, succ.shape[1] - 1)]
    pop = np.exp(truth["item_bias"][1:])
    popular = np.searchsorted(np.cumsum(pop / pop.sum()), rng.random(n), side="right") + 1
    return np.where(rng.random(n) < 0.5, similar, np.minimum(popular, len(pop)))


def _session_starts(cfg: Any, sess_user: np.ndarray, first_sess: np.ndarray,
                    span: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Start time of every session (S,): each user's sessions follow each other
    with gaps > 30 minutes; the gaps split an active span of 25-95% of a ~90-day
    window at uniform random points (normalised exponential spacings)."""
    n_users = cfg.n_users
    active = HISTORY_DAYS * DAY * rng.uniform(0.25, 0.95, n_users + 1)  # (n_users+1,)
    user_start = cfg.start_time + rng.random(n_users + 1) * (HISTORY_DAYS * DAY - active)
    spacing = rng.standard_exponential(len(sess_user)) * ~first_sess
    total = np.bincount(sess_user, weights=spacing, minlength=n_users + 1) + rng.standard_exponential(n_users + 1)
    gap = SESSION_GAP + 1.0 + active[sess_user] * spacing / total[sess_user]
    prev_span = np.concatenate([[0.0], span[:-1]])
    delta = np.where(first_sess, 0.0, gap + prev_span)
    cs = np.cumsum(delta)
    first_idx = np.maximum.accumulate(np.where(first_sess, np.arange(len(delta)), 0))
    return user_start[sess_user] + cs - cs[first_idx]


def build_events(cfg: Any, truth: dict[str, np.ndarray], seq_user: np.ndarray, seq_item: np.ndarray,
                 seq_step: np.ndarray, rng: np.random.Generator) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Expand consumed items (N,), sorted by user then step, into a clickstream.

    Per consumed item: ``Poisson(BROWSE_MEAN)`` browse views, then view -> click,
    then maybe add_to_cart, then maybe purchase. Returns the events table
    (EVENT_SCHEMA, sorted by user then time) and each user's first and last
    event time, (n_users + 1,) each.
    """
    n = len(seq_item)
    new_sess = (seq_step == 0) | (rng.random(n) < P_NEW_SESSION)
    n_browse = rng.poisson(BROWSE_MEAN, n)
    cart = rng.random(n) < CART_RATE * relevance_pairs(truth, seq_user, seq_item)
    price = truth["item_price"][seq_item]
    buy = cart & (rng.random(n) < PURCHASE_RATE / (1.0 + price / PRICE_SCALE))
    n_ev = n_browse + 2 + cart + buy
    owner = np.repeat(np.arange(n), n_ev)  # (E,) consumed item behind each event
    first_ev = np.cumsum(n_ev) - n_ev
    off = np.arange(len(owner)) - first_ev[owner]
    kind = np.where(off < n_browse[owner], 0, off - n_browse[owner] + 1)
    user = seq_user[owner]
    item = seq_item[owner]
    browse = kind == 0
    item[browse] = _browse_items(truth, item[browse], rng)
    del off

    dwell = np.full(len(owner), np.nan)
    view = kind <= 1
    aff = pair_dot(truth["user_factors"], user[view], truth["item_factors"], item[view])
    noise = rng.standard_normal(len(aff))
    dwell[view] = np.clip(np.exp(np.log(DWELL_MEDIAN) + DWELL_AFFINITY * aff + DWELL_SIGMA * noise), 1.0, DWELL_MAX)
    base = _GAP_LO[kind] + rng.random(len(owner)) * (_GAP_HI[kind] - _GAP_LO[kind])
    gap = np.where(kind == 0, dwell + base, np.where(kind == 1, dwell * base, base))

    sess_of_item = np.cumsum(new_sess) - 1
    ev_sess = sess_of_item[owner]
    sess_first = first_ev[new_sess]  # (S,) event index
    excl = np.cumsum(gap) - gap
    offset = excl - excl[sess_first][ev_sess]
    span = offset[np.concatenate([sess_first[1:], [len(owner)]]) - 1]
    sess_user = seq_user[new_sess]
    start = _session_starts(cfg, sess_user, seq_step[new_sess] == 0, span, rng)
    ts = start[ev_sess] + offset

    value = np.where(kind == 4, price[owner], dwell)
    table = _events_table(cfg, truth, user, item, ts, kind, value, ev_sess, sess_user, rng)
    first_ts = np.zeros(cfg.n_users + 1)
    last_ts = np.zeros(cfg.n_users + 1)
    first_ts[user[::-1]] = ts[::-1]
    last_ts[user] = ts
    return table, first_ts, last_ts


def _events_table(cfg: Any, truth: dict[str, np.ndarray], user: np.ndarray, item: np.ndarray, ts: np.ndarray,
                  kind: np.ndarray, value: np.ndarray, ev_sess: np.ndarray, sess_user: np.ndarray,
                  rng: np.random.Generator) -> pa.Table:
    """Arrow events table; channel and device are drawn per session."""
    n_sess = len(sess_user)
    chan_p = 1.0 / np.arange(1, len(cfg.channels) + 1)
    chan = rng.choice(len(cfg.channels), n_sess, p=chan_p / chan_p.sum())
    n_dev = truth["user_n_devices"]
    dev_offset = np.cumsum(n_dev) - n_dev
    device = dev_offset[sess_user] + np.floor(n_dev[sess_user] * rng.random(n_sess) ** 2).astype(np.int64)
    kinds = pa.array([EventType(k).value for k in _KINDS])
    return conform_events(pa.table({
        "user_id": id_strings(cfg.n_users + 1).take(pa.array(user)),
        "item_id": id_strings(cfg.n_items + 1).take(pa.array(item)),
        "timestamp": pa.array(ts),
        "event_type": kinds.take(pa.array(kind.astype(np.int8))),
        "value": pa.array(value, mask=np.isnan(value)),
        "session_id": id_strings(n_sess, "s").take(pa.array(ev_sess)),
        "channel": pa.array(list(cfg.channels)).take(pa.array(chan[ev_sess])),
        "device_id": id_strings(int(n_dev.sum()), "d").take(pa.array(device[ev_sess])),
    }))


def build_impressions(cfg: Any, truth: dict[str, np.ndarray], first_ts: np.ndarray, last_ts: np.ndarray,
                      rng: np.random.Generator) -> pa.Table:
    """Logged bandit feedback: ``n_requests`` slates of ``slate_size`` items.

    Requests go to users in proportion to their number of consumed items, at a
    uniform time within the user's active span; ``request_id`` follows time.
    Slates come from :func:`systematic_slates` (no duplicates, exact per-position
    propensities); clicks ~ Bernoulli(position_bias[k] * relevance).
    """
    r, k = cfg.n_requests, cfg.slate_size
    activity = truth["seq_len"][1:].astype(np.float64)
    users = rng.choice(cfg.n_users, r, p=activity / activity.sum()) + 1
    ts = first_ts[users] + rng.random(r) * (last_ts[users] - first_ts[users])
    order = np.argsort(ts, kind="stable")
    users, ts = users[order], ts[order]
    items = np.empty((r, k), dtype=np.int64)
    props = np.empty((r, k))
    for s, e in blocks(r, cfg.n_items + 1):
        p = logging_probs(truth, users[s:e], cfg.logging_temperature, k)
        items[s:e] = systematic_slates(p, k, rng)
        props[s:e] = np.take_along_axis(p, items[s:e], axis=1)
    flat_user = np.repeat(users, k)
    pos = np.tile(np.arange(k, dtype=np.int32), r)
    p_click = truth["position_bias"][pos] * relevance_pairs(truth, flat_user, items.ravel())
    click = (rng.random(r * k) < p_click).astype(np.int8)
    return pa.table({
        "request_id": pa.array(np.repeat(np.arange(r, dtype=np.int64), k)),
        "user_id": id_strings(cfg.n_users + 1).take(pa.array(flat_user)),
        "timestamp": pa.array(np.repeat(ts, k)),
        "position": pa.array(pos),
        "item_id": id_strings(cfg.n_items + 1).take(pa.array(items.ravel())),
        "propensity": pa.array(props.ravel()),
        "click": pa.array(click),
        "logging_policy": pa.repeat(pa.scalar(LOGGING_POLICY), r * k),
    })
