"""Online features: state updated per incoming event, read at request time.

:class:`OnlineFeatures` keeps, per entity key, the accumulators of
:mod:`recsys.features.definitions` (the same definitions the batch path reads),
packed into a few matrices per entity so that applying a batch of events or
reading a key costs a handful of numpy calls whatever the number of features:

* ``total`` / ``max``: a running sum / max (``__tot`` / ``__max``, one column per
  accumulator);
* ``decay``: a value and the key's reference time ``R`` (its latest event); an
  event at ``t`` adds ``w 2^(-(R - t)/h)`` after the value is moved to the new
  ``R``; a read at ``q`` returns ``value 2^(-(q - R)/h)`` (``__dec``, ``__ref_t``);
* ``window``: per (size, bucket) a ring of ``size / bucket`` bucket sums with
  their bucket ids; a read sums the buckets in ``(floor(q/b) - n, floor(q/b)]``
  (all windows of an entity share ``__wid`` / ``__win``);
* sessions: per (user, session) flags (has cart, has purchase, converted) that
  turn into the user's session counts.

Two ways in, same result (equal to applying the events one by one, in any order):

* ``ingest(...)`` - one event, O(1): appended to a flat write buffer, which
  is applied vectorised when it holds ``buffer_size`` events or before anything
  reads the state (read-your-writes: a read sees every event ingested before it);
* ``update(events)`` - a batch (pyarrow table, polars frame or column dict).

A read at ``q`` is the value as of ``q`` when every applied event is before
``q``. Feature values come from :func:`recsys.features.definitions.evaluate`,
the function the batch path calls.
"""
from __future__ import annotations

import math
from itertools import repeat
from operator import is_not
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys.features.definitions import BEHAVIOURAL, ENTITIES, SOURCES, Accumulator, FeatureSet, evaluate
from recsys.features.store import Table, read_tables, write_tables
from recsys.utils.errors import DataError

NO_BUCKET = np.iinfo(np.int64).min // 2
_CODES = {t: i for i, t in enumerate(BEHAVIOURAL)}
_TYPES = pa.array(BEHAVIOURAL)
FORMAT = "recsys.online_features/2"
#: per-event base quantities a source weight picks from (see :func:`_base`)
#: entries per buffered event in the flat write buffer
_W = 7
_KINDS = {"one": 0, "value": 1, "value_sq": 2, "value_n": 3, "time": 4}


def _type_mask(source: str) -> np.ndarray:
    """(n_types,) 1.0 on the event types the source counts."""
    return np.isin(np.arange(len(BEHAVIOURAL)), [_CODES[e] for e in SOURCES[source].event_types]).astype(np.float64)


def _base(value: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(n, 5): 1, value (0 when null), value^2 (0 when null), value present, time."""
    ok = ~np.isnan(value)
    v = np.where(ok, value, 0.0)
    return np.stack([np.ones(len(t)), v, v * v, ok.astype(np.float64), t], axis=1)


def _max_base(value: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(n, 5) values a ``max`` accumulator ranges over (-inf where absent)."""
    v = np.where(np.isnan(value), -np.inf, value)
    return np.stack([np.ones(len(t)), v, v * v, np.ones(len(t)), t], axis=1)


class _Plan:
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
            mask = np.stack([_type_mask(s) for s in sources], axis=1) if sources else np.zeros((len(BEHAVIOURAL), 0))
            return mask, np.array([_KINDS[SOURCES[s].weight] for s in sources], dtype=np.int64)

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


def _groups(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(order, starts, unique rows, group index of each sorted element)."""
    order = np.argsort(rows, kind="stable")
    rs = rows[order]
    new = np.empty(len(rs), dtype=bool)
    new[:1] = True
    np.not_equal(rs[1:], rs[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    inv = np.cumsum(new) - 1
    return order, starts, rs[starts], inv


class OnlineFeatures:
    """In-process online feature state for one :class:`FeatureSet`."""

    def __init__(self, fs: FeatureSet, params: Mapping[str, Any] | None = None, capacity: int = 1024,
                 buffer_size: int = 1024):
        self.fs, self.params = fs, dict(params) if params is not None else None
        self.tables: dict[str, Table] = {}
        self.accs = {e: fs.entity_accumulators(e) for e in fs.entities}
        self.plans = {e: _Plan(self.accs[e]) for e in fs.entities}
        for entity in fs.entities:
            self.tables[entity] = Table(ENTITIES[entity], self.plans[entity].columns(), capacity)
        self.has_sessions = any(SOURCES[a.source].session for a in self.accs.get("user", []))
        self.sessions = Table(("user_id", "session_id"), {"has_cart": ((), np.bool_, False),
                                                          "has_purchase": ((), np.bool_, False),
                                                          "converted": ((), np.bool_, False)}, capacity)
        self.watermark = -np.inf
        self.n_events = 0
        self.buffer_size = int(buffer_size)
        self._buf_limit = _W * self.buffer_size
        self._new_buffer()

    # ------------------------------------------------------------ update

    def _new_buffer(self) -> None:
        #: the buffered events, flat: 7 entries per event (user, item, t, code, value,
        #: session, category) - no per-event container object, so no GC churn
        self._buf: list[Any] = []
        self._pending_users: set[Any] = set()
        #: entity -> how many buffered events it has applied already (a read applies
        #: the buffer to the entity it reads only; the rest waits for the full flush)
        self._applied = dict.fromkeys(self.fs.entities, 0)

    def ingest(self, user_id: str, item_id: str, timestamp: float, event_type: str, value: float | None = None,
               session_id: str | None = None, category: str | None = "unknown") -> bool:
        """Add one event (O(1): appended to the write buffer; applied in bulk when
        the buffer is full or before the next read). Non-behavioural events are
        ignored (returns False)."""
        code = _CODES.get(event_type)
        if code is None:
            return False
        t = float(timestamp)
        if t != t:
            raise DataError(None, "NaN timestamp in an online event", column="timestamp")
        buf = self._buf
        buf.extend((user_id, item_id, t, code, math.nan if value is None else value, session_id, category))
        self._pending_users.add(user_id)
        if len(buf) >= self._buf_limit:
            self.flush()
        return True

    def ingest_event(self, event: Mapping[str, Any]) -> bool:
        """:meth:`ingest` of a mapping with the event's columns."""
        return self.ingest(event["user_id"], event["item_id"], event["timestamp"], event["event_type"],
                           event.get("value"), event.get("session_id"), event.get("category", "unknown"))

    @property
    def pending(self) -> int:
        """Events ingested but not applied yet."""
        return len(self._buf) // _W

    def _flush_for(self, entity: str, keys: list[Any]) -> None:
        """Read-your-writes: apply the buffer when an ingested event touches any of
        ``keys`` (a key's state depends only on its own events, so a read of other
        keys is already exact and skips the flush)."""
        buf = self._buf
        if not buf:
            return
        kc = ENTITIES[entity]
        if kc[0] == "item_id":
            pend = set(buf[_W * self._applied[entity] + 1::_W])
        else:
            pend = self._pending_users
        if len(kc) == 1:
            hit = any(k in pend for k in keys)
        else:
            hit = any(k[0] in pend for k in keys)
        if hit:
            self._flush_entity(entity)

    def _buffer_columns(self, start: int) -> dict[str, Any]:
        b = self._buf[_W * start:]
        user, item, t, code, value, session, category = (b[j::_W] for j in range(_W))
        return {"timestamp": np.array(t, dtype=np.float64), "code": np.array(code, dtype=np.int64),
                "value": np.array(value, dtype=np.float64), "user_id": user, "item_id": item,
                "session_id": session, "category": category}

    def flush(self) -> int:
        """Apply the buffered events (vectorised) to every entity; returns how many."""
        n = len(self._buf) // _W
        if not n:
            return 0
        starts: dict[int, list[str]] = {}
        for entity, done in self._applied.items():
            if done < n:
                starts.setdefault(done, []).append(entity)
        for start, entities in starts.items():
            self._apply_columns(self._buffer_columns(start), entities)
        self.watermark = max(self.watermark, max(self._buf[2::_W]))
        self.n_events += n
        self._new_buffer()
        return n

    def _flush_entity(self, entity: str) -> None:
        start, n = self._applied[entity], len(self._buf) // _W
        if start < n:
            self._apply_columns(self._buffer_columns(start), [entity])
            self._applied[entity] = n

    def update(self, events: Any) -> int:
        """Apply events (pyarrow table, polars frame or a column dict); returns
        how many behavioural events were applied."""
        self.flush()
        cols = _columns(events)
        n = self._apply_columns(cols, self.fs.entities)
        if n:
            self.watermark = max(self.watermark, float(cols["timestamp"].max()))
            self.n_events += n
        return n

    def _apply_columns(self, cols: dict[str, Any], entities: list[str]) -> int:
        code = cols["code"]
        n = len(code)
        if n == 0:
            return 0
        t, value = cols["timestamp"], cols["value"]
        base = _base(value, t)
        mbase = None
        rows = {}
        for entity in entities:
            kc = ENTITIES[entity]
            keys = cols[kc[0]] if len(kc) == 1 else list(zip(cols[kc[0]], cols[kc[1]]))
            rows[entity] = self.tables[entity].lookup(keys)
            plan = self.plans[entity]
            if plan.max and mbase is None:
                mbase = _max_base(value, t)
            self._apply(entity, plan, rows[entity], code, base, mbase, t)
        if self.has_sessions and "user" in rows:
            self._sessions(cols, rows["user"], code)
        return n

    def _apply(self, entity: str, p: _Plan, rows: np.ndarray, code: np.ndarray, base: np.ndarray,
               mbase: np.ndarray | None, t: np.ndarray) -> None:
        c = self.tables[entity].cols
        order, starts, uniq, inv = _groups(rows)
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
            self._apply_windows(c, p, rows, code, base, t)

    @staticmethod
    def _apply_windows(c: dict[str, np.ndarray], p: _Plan, rows: np.ndarray, code: np.ndarray,
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

    def _sessions(self, cols: dict[str, Any], user_rows: np.ndarray, code: np.ndarray) -> None:
        sess = cols["session_id"]
        has = np.fromiter(map(is_not, sess, repeat(None, len(sess))), dtype=bool, count=len(sess))
        if not has.any():
            return
        idx = np.flatnonzero(has)
        keys = list(zip(cols["user_id"], sess)) if len(idx) == len(sess) else [
            (cols["user_id"][i], sess[i]) for i in idx]
        new = np.zeros(len(keys), dtype=bool)
        srow = self.sessions.lookup(keys, new)
        urow, c = user_rows[idx], code[idx]
        sc = self.sessions.cols
        ucol = self.tables["user"].cols
        names = {SOURCES[a.source].session: a.name for a in self.accs["user"] if SOURCES[a.source].session}

        def count(name: str | None, mask: np.ndarray) -> np.ndarray:
            """Distinct sessions among ``mask`` events: their rows; +1 per session to its user."""
            r, first = np.unique(srow[mask], return_index=True)
            if name is not None and len(r):
                np.add.at(ucol[name], urow[mask][first], 1.0)
            return r

        count(names.get("start"), new)
        cart = c == _CODES["add_to_cart"]
        r = count(names.get("cart"), cart & ~sc["has_cart"][srow])
        sc["has_cart"][r] = True
        sc["has_purchase"][srow[c == _CODES["purchase"]]] = True
        conv = sc["has_cart"][srow] & sc["has_purchase"][srow] & ~sc["converted"][srow]
        r = count(names.get("converted"), conv)
        sc["converted"][r] = True

    # ------------------------------------------------------------ read

    def accumulators(self, entity: str, rows: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        """Accumulator values of ``rows`` (-1 = unknown key) as of ``t`` (every
        ingested event applied first)."""
        self.flush()
        return self._accumulators(entity, rows, t)

    def _accumulators(self, entity: str, rows: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        c = self.tables[entity].cols
        p = self.plans[entity]
        ok = rows >= 0
        all_ok = bool(ok.all())
        r = rows if all_ok else np.where(ok, rows, 0)
        if not (isinstance(t, np.ndarray) and t.dtype == np.float64 and t.shape == rows.shape):
            t = np.broadcast_to(np.asarray(t, dtype=np.float64), rows.shape)
        out: dict[str, np.ndarray] = {}
        if p.tot:
            tot = c["__tot"][r]
            for j, a in enumerate(p.tot):
                out[a.name] = tot[:, j]
        if p.max:
            mx = c["__max"][r]
            mx = np.where(mx == -np.inf, np.nan, mx)
            for j, a in enumerate(p.max):
                out[a.name] = mx[:, j]
        if p.dec:
            ref = c["__ref_t"][r]
            age = np.where(ref == -np.inf, np.inf, t - ref)
            dec = np.where(np.isinf(age)[:, None], 0.0, c["__dec"][r] * np.exp2(-age[:, None] / p.dec_h))
            for j, a in enumerate(p.dec):
                out[a.name] = dec[:, j]
        if p.n_slots:
            cur = np.floor(t[:, None] / p.slot_bucket).astype(np.int64)               # (R, slots)
            ids = c["__wid"][r]
            live = (ids > cur - p.slot_nb) & (ids <= cur)
            sums = np.add.reduceat(c["__win"][r] * live[:, :, None], p.w_off, axis=1)  # (R, g, s)
            for name, (gi, si) in p.win_index.items():
                out[name] = sums[:, gi, si]
        for a in p.session:
            out[a.name] = c[a.name][r]
        if not all_ok:
            for a in self.accs[entity]:
                out[a.name] = np.where(ok, out[a.name], np.nan if a.mode == "max" else 0.0)
        return {a.name: out[a.name] for a in self.accs[entity]}

    def read(self, entity: str, keys: list[Any], t: float | np.ndarray) -> dict[str, np.ndarray]:
        """Feature values of ``keys`` (str, or (user, item|category) tuples) as of ``t``;
        sees every event ingested before the call."""
        keys = list(keys)
        self._flush_for(entity, keys)
        rows = self.tables[entity].find(keys)
        tt = np.broadcast_to(np.asarray(t, dtype=np.float64), rows.shape)
        return evaluate(self.fs, entity, self._accumulators(entity, rows, tt), tt, self.params)

    def read_user(self, user_id: str, t: float) -> dict[str, float]:
        """A user's full feature vector as of ``t`` (name -> value)."""
        if user_id in self._pending_users:
            self._flush_entity("user")
        row = self.tables["user"].index.get(user_id, -1)
        tt = np.full(1, t, dtype=np.float64)
        vals = evaluate(self.fs, "user", self._accumulators("user", np.full(1, row, dtype=np.int64), tt), tt,
                        self.params)
        return dict(zip(vals, np.concatenate(list(vals.values())).tolist()))

    # ------------------------------------------------------------ erase / persist

    def erase_user(self, user_id: str) -> dict[str, int]:
        """Drop every row keyed by ``user_id`` (user, user x item, user x
        category, sessions). Item-level sums keep the user's past contributions;
        `recsys data erase` rebuilds them from the erased event store."""
        self.flush()
        out = {}
        for entity, tab in self.tables.items():
            if "user_id" not in ENTITIES[entity]:
                continue
            keys = [user_id] if len(tab.key_names) == 1 else [k for k in tab.index if k[0] == user_id]
            out[entity] = tab.delete(keys)
        out["sessions"] = self.sessions.delete([k for k in self.sessions.index if k[0] == user_id])
        return out

    def save(self, directory: str | Path) -> None:
        """Snapshot the whole state to Parquet (one atomic folder)."""
        self.flush()
        tables = {e: t.to_arrow() for e, t in self.tables.items()}
        tables["sessions"] = self.sessions.to_arrow()
        meta = {"feature_set": self.fs.version, "params": self.params, "watermark": self.watermark,
                "n_events": self.n_events, "format": FORMAT}
        write_tables(directory, tables, meta)

    @classmethod
    def load(cls, directory: str | Path, fs: FeatureSet) -> "OnlineFeatures":
        tables, meta = read_tables(directory)
        if meta.get("feature_set") != fs.version:
            raise DataError(directory, f"state built for feature set {meta.get('feature_set')}, not {fs.version}")
        if meta.get("format") != FORMAT:
            raise DataError(directory, f"state format {meta.get('format')!r}, expected {FORMAT!r} (rebuild it)")
        obj = cls(fs, meta.get("params"))
        for e, tab in obj.tables.items():
            if e in tables:
                tab.load_arrow(tables[e], str(Path(directory) / f"{e}.parquet"))
        if "sessions" in tables:
            obj.sessions.load_arrow(tables["sessions"], str(Path(directory) / "sessions.parquet"))
        w = meta.get("watermark")
        obj.watermark = -np.inf if w is None else float(w)
        obj.n_events = int(meta.get("n_events", 0))
        return obj


def _columns(events: Any) -> dict[str, Any]:
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
    code = pc.index_in(tab.column("event_type").cast(pa.string()), value_set=_TYPES)
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
