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
``q``. Feature values come from :func:`recsys.features.transforms.evaluate`,
the function the batch path calls. The matrices and the vectorised updates are
:mod:`recsys.features.online_state`.
"""
from __future__ import annotations

import math
from itertools import repeat
from operator import is_not
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from recsys.features.definitions import ENTITIES, SOURCES, FeatureSet
from recsys.features.online_state import (
    CODES,
    StatePlan,
    apply_events,
    base_weights,
    event_columns,
    max_weights,
)
from recsys.features.store import Table, read_tables, write_tables
from recsys.features.transforms import evaluate
from recsys.utils.errors import DataError

FORMAT = "recsys.online_features/2"
#: entries per buffered event in the flat write buffer
_W = 7


class OnlineFeatures:
    """In-process online feature state for one :class:`FeatureSet`."""

    def __init__(self, fs: FeatureSet, params: Mapping[str, Any] | None = None, capacity: int = 1024,
                 buffer_size: int = 1024):
        self.fs, self.params = fs, dict(params) if params is not None else None
        self.tables: dict[str, Table] = {}
        self.accs = {e: fs.entity_accumulators(e) for e in fs.entities}
        self.plans = {e: StatePlan(self.accs[e]) for e in fs.entities}
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
        code = CODES.get(event_type)
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
        cols = event_columns(events)
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
        base = base_weights(value, t)
        mbase = None
        rows = {}
        for entity in entities:
            kc = ENTITIES[entity]
            keys = cols[kc[0]] if len(kc) == 1 else list(zip(cols[kc[0]], cols[kc[1]]))
            rows[entity] = self.tables[entity].lookup(keys)
            plan = self.plans[entity]
            if plan.max and mbase is None:
                mbase = max_weights(value, t)
            apply_events(self.tables[entity].cols, plan, rows[entity], code, base, mbase, t)
        if self.has_sessions and "user" in rows:
            self._sessions(cols, rows["user"], code)
        return n

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
        cart = c == CODES["add_to_cart"]
        r = count(names.get("cart"), cart & ~sc["has_cart"][srow])
        sc["has_cart"][r] = True
        sc["has_purchase"][srow[c == CODES["purchase"]]] = True
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
