"""The decision log (and the feedback log): Parquet parts written by a flush thread.

Rows are buffered in memory and written at least every ``flush_interval_s``
(<= 1 s) as a new part file ``<prefix>-<pid>-<start time>-<seq>.parquet`` of at
most ``rotate_rows`` rows. Each part is written to a temporary name, fsynced,
renamed into place and the folder fsynced, so after a crash (``kill -9``) every
part on disk is a complete, readable Parquet file; rows still in the buffer (at
most one flush interval) are lost. Several workers can share a folder (the pid is
in the name). :func:`read_log` reads every part of a folder in write order.

Decision rows (one per slate position; a decision that returned no item is one
row with ``position = -1``) carry the columns of the logged-feedback format
(:mod:`recsys.data.bandit_logs`) except the reward, which ``recsys logs join``
adds from the feedback log.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

DECISION_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("user_id", pa.string()), ("timestamp", pa.float64()),
    ("channel", pa.string()), ("position", pa.int64()), ("item_id", pa.string()), ("score", pa.float64()),
    ("propensity", pa.float64()), ("logging_policy", pa.string()), ("fallback_level", pa.string()),
    ("k", pa.int64()), ("embedding_version", pa.string()), ("feature_set_version", pa.string()),
    ("ranker", pa.string()), ("latency_ms", pa.string()), ("reasons", pa.string()), ("personalised", pa.bool_()),
    ("request", pa.string()), ("arm", pa.string()),
])
FEEDBACK_SCHEMA = pa.schema([
    ("decision_id", pa.string()), ("item_id", pa.string()), ("event", pa.string()), ("timestamp", pa.float64()),
])


def decision_rows(d: Any, channel: str, k: int, user_id: str, request: dict[str, Any] | None = None
                  ) -> list[dict[str, Any]]:
    """Rows of one :class:`~recsys.service.pipeline.Decision`; ``user_id`` is what may be
    logged (a pseudonym for users without consent); ``request`` (the request's other
    fields: context, exclude) is stored as JSON. ``propensity`` is the policy's
    marginal probability of that item at that position given the request and the
    state (:mod:`recsys.service.explore`): 1.0 for a deterministic slate; NaN where a
    concurrent request changed the slate after the draw (``recsys logs join`` drops
    such requests). ``arm``: the experiment arm that served it
    (:mod:`recsys.service.experiment`)."""
    explored = getattr(d, "exploration", "none")
    policy = f"recsys.service/{d.level}" + ("" if explored == "none" else f"/{explored}")
    props = list(getattr(d, "propensities", None) or [1.0] * len(d.items))
    common = {"request_id": d.decision_id, "user_id": user_id, "timestamp": d.timestamp, "channel": channel,
              "logging_policy": policy, "fallback_level": d.level, "k": k, "arm": getattr(d, "arm", "default"),
              "embedding_version": d.versions.get("embedding_version"),
              "feature_set_version": d.versions.get("feature_set_version"), "ranker": d.versions.get("ranker"),
              "latency_ms": json.dumps(d.latency_ms, sort_keys=True), "reasons": json.dumps(d.reasons),
              "personalised": d.level == "personalised", "request": json.dumps(request or {}, sort_keys=True)}
    if not d.items:
        return [{**common, "position": -1, "item_id": "", "score": None, "propensity": 1.0}]
    return [{**common, "position": p, "item_id": i, "score": s, "propensity": q}
            for p, (i, s, q) in enumerate(zip(d.items, d.scores, props))]


class PartWriter:
    """Buffered rows -> crash-safe Parquet parts, flushed by a background thread.

    Args:
        directory: the log folder (created).
        schema: the row schema.
        prefix: part file name prefix (``decisions``, ``feedback``).
        flush_interval_s: the flush period (rows reach disk within about this long).
        rotate_rows: most rows per part file.
    """

    def __init__(self, directory: str | Path, schema: pa.Schema, prefix: str, flush_interval_s: float = 0.5,
                 rotate_rows: int = 100_000):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.schema, self.prefix = schema, prefix
        self.interval, self.rotate_rows = float(flush_interval_s), int(rotate_rows)
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._seq = 0
        self._start = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self._stop = threading.Event()
        self.rows_written = 0
        self._thread = threading.Thread(target=self._loop, name=f"recsys-{prefix}-log", daemon=True)
        self._thread.start()

    def write(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self._rows.extend(rows)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def flush(self) -> int:
        """Write the buffered rows now; returns how many."""
        with self._write_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            for s in range(0, len(rows), self.rotate_rows):
                self._write_part(rows[s:s + self.rotate_rows])
            self.rows_written += len(rows)
            return len(rows)

    def _write_part(self, rows: list[dict[str, Any]]) -> None:
        self._seq += 1
        name = f"{self.prefix}-{os.getpid()}-{self._start}-{self._seq:06d}.parquet"
        tmp = self.dir / f".{name}.tmp"
        table = pa.Table.from_pylist(rows, schema=self.schema)
        with open(tmp, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / name)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Stop the thread and write what is left."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()


def read_log(directory: str | Path, prefix: str, schema: pa.Schema) -> pa.Table:
    """Every complete part of a log folder, in name order (an empty table when none)."""
    parts = sorted(Path(directory).glob(f"{prefix}-*.parquet"))
    if not parts:
        return schema.empty_table()
    return pa.concat_tables([_conform(pq.read_table(p), schema) for p in parts])


def _conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """A part in ``schema``: columns an older writer did not have (e.g. ``arm``) are null."""
    for f in schema:
        if f.name not in t.column_names:
            t = t.append_column(f.name, pa.nulls(t.num_rows, f.type))
    return t.select(schema.names).cast(schema)
