"""Online behavioural features for the ranker: the same definitions and code as offline.

A ranker trained with behavioural features (``recsys.features.ranker.add_behavioural_features``)
carries in its bundle manifest a ``behavioural`` block: the feature-set config and
version, the fitted params (empirical-Bayes priors, cohort statistics), the feature
names, the column prefix and the transform. :class:`Behaviour` rebuilds the
feature set from that config (its version must equal the recorded one), keeps a
:class:`recsys.features.online.OnlineFeatures` state fed by ``/v1/events`` (and,
at start, by replaying an event file: ``serve.features.events``), and at request
time reads the user, item, user x item and user x category features of the
candidates as of now, cast to each feature's dtype the way the offline frame does
(:func:`recsys.features.batch.features_frame`) and transformed by
:func:`recsys.features.ranker.signed_log1p`.

Several workers / replicas: events go through the state backend's event stream
(:meth:`recsys.service.state.RedisState.publish_event`) and every replica applies
the stream to its own state before it reads (:meth:`Behaviour.sync`), so all of
them compute from the same events.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from recsys.features.definitions import build_feature_set
from recsys.features.online import OnlineFeatures
from recsys.features.ranker import signed_log1p
from recsys.utils.errors import RecsysError

UNKNOWN_CATEGORY = "unknown"


class BehaviourError(RecsysError):
    """A ranker's behavioural block that this service cannot compute."""


class Behaviour:
    """Online behavioural features of one ranker bundle's ``behavioural`` block."""

    def __init__(self, spec: Mapping[str, Any], where: str = "<ranker>"):
        if spec.get("transform") != "signed_log1p":
            raise BehaviourError(f"{where}: behavioural.transform={spec.get('transform')!r}; "
                                 f"this service computes signed_log1p")
        try:
            self.fs = build_feature_set(spec.get("config") or {})
        except (ValueError, KeyError, TypeError) as e:
            raise BehaviourError(f"{where}: behavioural.config does not build a feature set ({e})") from None
        if self.fs.version != spec.get("feature_set"):
            raise BehaviourError(f"{where}: behavioural.config builds feature set {self.fs.version}, the ranker was "
                                 f"trained on {spec.get('feature_set')} (different feature code?)")
        self.version = self.fs.version
        self.prefix = str(spec.get("prefix", "bf_"))
        self.names = [str(n) for n in spec.get("names") or []]
        unknown = [n for n in self.names if n not in self.fs.by_name]
        if unknown:
            raise BehaviourError(f"{where}: behavioural.names {unknown[:3]} are not features of {self.version}")
        self.params = spec.get("params")
        self.by_entity: dict[str, list[str]] = {}
        for n in self.names:
            self.by_entity.setdefault(self.fs.by_name[n].entity, []).append(n)
        self.online = OnlineFeatures(self.fs, self.params)
        self.cursor = "0-0"  # last event-stream id applied (shared state)
        self.lock = threading.Lock()

    @property
    def columns(self) -> list[str]:
        return [self.prefix + n for n in self.names]

    def ingest(self, user: str, item: str, t: float, event_type: str, category: str | None = None,
               session_id: str | None = None, value: float | None = None) -> bool:
        with self.lock:
            return self.online.ingest(user, item, t, event_type, value, session_id, category or UNKNOWN_CATEGORY)

    def replay(self, events: Any, categories: Mapping[str, str] | None = None) -> int:
        """Apply an event table (Parquet path, pyarrow table or polars frame with the
        event-store columns) to the state: the warm start of a new process. Without
        a ``category`` column, items get theirs from ``categories`` (the catalogue)."""
        import polars as pl

        if isinstance(events, (str, Path)):
            from recsys.features.store import read_parquet_frame

            events = read_parquet_frame(events)
        elif not isinstance(events, pl.DataFrame):
            events = pl.from_arrow(events)
        if "category" not in events.columns:
            cats = categories or {}
            events = events.with_columns(pl.col("item_id").cast(pl.String).replace_strict(
                cats, default=UNKNOWN_CATEGORY, return_dtype=pl.String).alias("category"))
        with self.lock:
            return self.online.update(events)

    def sync(self, state: Any) -> None:
        """Apply the events other replicas published since the last sync (shared state only)."""
        if not getattr(state, "remote", False):
            return
        with self.lock:
            events, self.cursor = state.read_events(self.cursor)
            for e in events:
                if e.get("erase_user"):
                    self.online.erase_user(e["erase_user"])
                    continue
                self.online.ingest(e["user_id"], e["item_id"], float(e["timestamp"]), e["event_type"],
                                   None if e.get("value") in (None, "") else float(e["value"]),
                                   e.get("session_id") or None, e.get("category") or UNKNOWN_CATEGORY)

    def erase_user(self, user: str) -> None:
        with self.lock:
            self.online.erase_user(user)

    def features(self, user: str, items: Sequence[str], categories: Sequence[str], t: float) -> dict[str, np.ndarray]:
        """``{prefix + name: (n,) float32}`` for one user and ``items`` as of ``t``."""
        n = len(items)
        keys = {"user": [user], "item": list(items), "user_item": [(user, i) for i in items],
                "user_category": [(user, c or UNKNOWN_CATEGORY) for c in categories]}
        out: dict[str, np.ndarray] = {}
        with self.lock:
            for entity, names in self.by_entity.items():
                vals = self.online.read(entity, keys[entity], t)
                for name in names:
                    v = np.asarray(vals[name], dtype=np.float64)
                    dtype = self.fs.by_name[name].dtype
                    if dtype.startswith("int"):
                        v = np.round(v)
                    elif dtype == "float32":
                        v = v.astype(np.float32).astype(np.float64)
                    v = signed_log1p(v)
                    out[self.prefix + name] = np.broadcast_to(v, (n,)).copy() if v.shape[0] != n else v
        return out
