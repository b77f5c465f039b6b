"""The matrices of the online store and the vectorised updates that change them.

Per entity, :class:`StatePlan` says which matrix column holds which accumulator
(``__tot`` / ``__max`` one column per total / max accumulator; ``__dec`` and the
key's reference time ``__ref_t`` for decayed sums; ``__wid`` / ``__win`` the bucket
ids and sums of every window's ring; one column per session count) and holds the
per-event-type weight tables; :func:`apply_events` adds a batch of events to the
rows they touch, a handful of numpy calls whatever the number of features.
:class:`recsys.features.online.OnlineFeatures` owns the tables and the buffer.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.features.definitions import BEHAVIOURAL, SOURCES, Accumulator
from recsys.utils.errors import DataError

NO_BUCKET = np.iinfo(np.int64).min // 2
#: behavioural event type -> code (the column of the per-type weight tables)
CODES = {t: i for i, t in enumerate(BEHAVIOURAL)}
TYPES = pa.array(BEHAVIOURAL)
#: per-event base quantities a source weight picks from (see :func:`base_weights`)
KINDS = {"one": 0, "value": 1, "value_sq": 2, "value_n": 3, "time": 4}


def type_mask(source: str) -> np.ndarray:
    """(n_types,) 1.0 on the event types the source counts."""
    return np.isin(np.arange(len(BEHAVIOURAL)), [CODES[e] for e in SOURCES[source].event_types]).astype(np.float64)


def base_weights(value: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(n, 5): 1, value (0 when null), value^2 (0 when null), value present, time."""
    ok = ~np.isnan(value)
    v = np.where(ok, value, 0.0)
    return np.stack([np.ones(len(t)), v, v * v, ok.astype(np.float64), t], axis=1)


def max_weights(value: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(n, 5) values a ``max`` accumulator ranges over (-inf where absent)."""
    v = np.where(np.isnan(value), -np.inf, value)
    return np.stack([np.ones(len(t)), v, v * v, np.ones(len(t)), t], axis=1)


class StatePlan:
    """Which matrix column holds which accumulator of one entity, plus the
    per-event-type weight tables that turn a batch of events into the rows to add."""

    def __init__(self, accs: list[Accumulator]):
        plain = [a for a in accs if not SOURCES[a.source].session]
        self.session = [a for a in accs if SOURCES[a.source].session]
        self.tot = [a for a in plain if a.mode == "total"]
        self.max = [a for a in plain if a.mode == "max"]
        self.dec = [a for a in plain if a.mode == "decay"]
        win = [a for a in plain if a.mode == "window"]
        self.wgroups = list(dict.fromkeys((a.window, a.bucket) for a in win))
        self.wsrc = list(dict.fromkeys(a.source for a in win))

        def table(group: list[Any], sources: list[str]) -> tuple[np.ndarray, np.ndarray]:
            mask = np.stack([type_mask(s) for s in sources], axis=1) if sources else np.zeros((len(BEHAVIOURAL), 0))
            return mask, np.array([KINDS[SOURCES[s].weight] for s in sources], dtype=np.int64)

        self.tot_mask, self.tot_kind = table(self.tot, [a.source for a in self.tot])
        self.max_mask, self.max_kind = table(self.max, [a.source for a in self.max])
        self.max_mask = self.max_mask.astype(bool)
        self.dec_mask, self.dec_kind = table(self.dec, [a.source for a in self.dec])
        self.dec_h = np.array([a.half_life for a in self.dec], dtype=np.float64)
        self.win_mask, self.win_kind = table(win, self.wsrc)
        nbs = [int(round(w / b)) for w, b in self.wgroups]
        self.w_nb = np.array(nbs, dtype=np.int64)
        self.w_bucket = np.array([b for _, b in self.wgroups], dtype=np.float64)
        self.w_off = np.r_[0, np.cumsum(nbs)[:-1]].astype(np.int64) if nbs else np.zeros(0, dtype=np.int64)
        self.n_slots = int(sum(nbs))
        # per slot: its window group's bucket width and bucket count (reads)
        self.slot_bucket = np.repeat(self.w_bucket, self.w_nb) if nbs else np.zeros(0)
        self.slot_nb = np.repeat(self.w_nb, self.w_nb) if nbs else np.zeros(0, dtype=np.int64)
        self.win_index = {a.name: (self.wgroups.index((a.window, a.bucket)), self.wsrc.index(a.source)) for a in win}

    def columns(self) -> dict[str, tuple]:
        cols: dict[str, tuple] = {}
        if self.tot:
            cols["__tot"] = ((len(self.tot),), np.float64, 0.0)
        if self.max:
            cols["__max"] = ((len(self.max),), np.float64, -np.inf)
        if self.dec:
            cols["__dec"] = ((len(self.dec),), np.float64, 0.0)
            cols["__ref_t"] = ((), np.float64, -np.inf)
        if self.n_slots:
            cols["__wid"] = ((self.n_slots,), np.int64, NO_BUCKET)
            cols["__win"] = ((self.n_slots, len(self.wsrc)), np.float64, 0.0)
        for a in self.session:
            cols[a.name] = ((), np.float64, 0.0)
        return cols


def group_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(order, starts, unique rows, group index of each sorted element)."""
    order = np.argsort(rows, kind="stable")
    rs = rows[order]
    new = np.empty(len(rs), dtype=bool)
    new[:1] = True
    np.not_equal(rs[1:], rs[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    inv = np.cumsum(new) - 1
    return order, starts, rs[starts], inv


def apply_events(c: dict[str, np.ndarray], p: StatePlan, rows: np.ndarray, code: np.ndarray, base: np.ndarray,
                 mbase: np.ndarray | None, t: np.ndarray) -> None:
    """Add events (their ``rows`` in the entity's table, type ``code``, :func:`base_weights`
    ``base`` / :func:`max_weights` ``mbase``, times ``t``) to the matrices ``c``."""
    order, starts, uniq, inv = group_rows(rows)
    code_s, base_s, t_s = code[order], base[order], t[order]
    if p.tot:
        w = p.tot_mask[code_s] * base_s[:, p.tot_kind]
        c["__tot"][uniq] += np.add.reduceat(w, starts, axis=0)
    if p.max:
        x = np.where(p.max_mask[code_s], mbase[order][:, p.max_kind], -np.inf)
        m = c["__max"]
        m[uniq] = np.maximum(m[uniq], np.maximum.reduceat(x, starts, axis=0))
    if p.dec:
        ref = c["__ref_t"]
        old = ref[uniq]
        new = np.maximum(old, np.maximum.reduceat(t_s, starts))
        seen = ~np.isneginf(old)
        gap = np.where(seen, new - old, 0.0)
        carried = np.where(seen[:, None], c["__dec"][uniq] * np.exp2(-gap[:, None] / p.dec_h), 0.0)
        w = p.dec_mask[code_s] * base_s[:, p.dec_kind] * np.exp2(-(new[inv] - t_s)[:, None] / p.dec_h)
        c["__dec"][uniq] = carried + np.add.reduceat(w, starts, axis=0)
        ref[uniq] = new
    if p.n_slots:
        apply_windows(c, p, rows, code, base, t)

def apply_windows(c: dict[str, np.ndarray], p: StatePlan, rows: np.ndarray, code: np.ndarray,
                  base: np.ndarray, t: np.ndarray) -> None:
    """Every window of the entity at once: each event lands in one slot per
    window group; a slot whose stored bucket is older than the newest bucket
    mapped to it is reset; only events of the newest bucket are added."""
    n = len(t)
    k = np.floor(t[None, :] / p.w_bucket[:, None]).astype(np.int64)            # (g, n)
    flat = (rows[None, :] * p.n_slots + (p.w_off[:, None] + k % p.w_nb[:, None])).reshape(-1)
    k = k.reshape(-1)
    ids = c["__wid"].reshape(-1)
    stored = ids[flat]
    np.maximum.at(ids, flat, k)                                                  # newest bucket per slot
    newk = ids[flat]
    sums = c["__win"].reshape(-1, len(p.wsrc))
    sums[flat[stored < newk]] = 0.0                                              # slot moved on: reset
    live = np.flatnonzero(k == newk)                                             # events of that bucket
    dest, w = flat[live], p.win_mask[code] * base[:, p.win_kind]                 # (n, s)
    ev = live % n
    for j in range(len(p.wsrc)):
        np.add.at(sums[:, j], dest, w[ev, j])


def event_columns(events: Any) -> dict[str, Any]:
    """Event columns as numpy (timestamp, value, code) and Python lists (ids)."""
    if isinstance(events, Mapping):
        tab = pa.table({k: v for k, v in events.items()})
    elif isinstance(events, pa.Table):
        tab = events
    else:
        tab = events.to_arrow()
    for col in ("user_id", "item_id", "timestamp", "event_type"):
        if col not in tab.column_names:
            raise DataError(None, "online update lacks a required column", column=col)
    n = tab.num_rows
    t = np.asarray(tab.column("timestamp").to_numpy(), dtype=np.float64)
    if n and np.isnan(t).any():
        raise DataError(None, "NaN timestamp in an online update", column="timestamp")
    code = pc.index_in(tab.column("event_type").cast(pa.string()), value_set=TYPES)
    if code.null_count:  # keep behavioural events only
        keep = code.is_valid()
        tab, code, t = tab.filter(keep), code.filter(keep), t[np.asarray(keep)]
        n = tab.num_rows
    out: dict[str, Any] = {"timestamp": t, "code": np.asarray(code.to_numpy(), dtype=np.int64)}
    out["value"] = (np.asarray(tab.column("value").cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
                    if "value" in tab.column_names else np.full(n, np.nan))
    out["user_id"] = tab.column("user_id").cast(pa.string()).to_pylist()
    out["item_id"] = tab.column("item_id").cast(pa.string()).to_pylist()
    out["session_id"] = (tab.column("session_id").cast(pa.string()).to_pylist() if "session_id" in tab.column_names
                         else [None] * n)
    out["category"] = (tab.column("category").cast(pa.string()).to_pylist() if "category" in tab.column_names
                       else ["unknown"] * n)
    return out
