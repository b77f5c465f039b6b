"""``recsys logs join``: decisions + feedback -> a logged-feedback file for OPE.

A decision row's reward is 1 when the feedback log has ``reward_event`` for the
same ``(decision_id, item_id)`` within ``window_s`` seconds after the decision,
else 0. Decisions with no item (``position = -1``) are dropped, and so are slates
whose length differs from ``slate_size`` (default: the most common length), since
:mod:`recsys.data.bandit_logs` needs positions ``0..K-1`` in every request, and
requests with a position whose propensity is unknown (NaN: a concurrent request
changed an explored slate after its draw, see :mod:`recsys.service.explore`). The
output is one Parquet file with the default columns of that format
(``request_id, user_id, timestamp, position, item_id, click, propensity,
logging_policy``) plus the decision log's other columns, written atomically.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.service.decision_log import DECISION_SCHEMA, FEEDBACK_SCHEMA, read_log
from recsys.utils.errors import DataError


def join_logs(log_dir: str | Path, out: str | Path, *, window_s: float = 3600.0, reward_event: str = "click",
              slate_size: int | None = None, feedback_dir: str | Path | None = None) -> dict[str, Any]:
    """Join the decision and feedback parts of ``log_dir`` (feedback from
    ``feedback_dir`` when given) into ``out``; returns counts."""
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        raise DataError(log_dir, "decision log folder not found")
    dec = read_log(log_dir, "decisions", DECISION_SCHEMA)
    if dec.num_rows == 0:
        raise DataError(log_dir, "no decision parts (decisions-*.parquet) in it")
    fb = read_log(Path(feedback_dir) if feedback_dir else log_dir, "feedback", FEEDBACK_SCHEMA)
    if window_s <= 0:
        raise DataError(None, f"window_s={window_s}: expected > 0 seconds")
    hits: dict[tuple[str, str], list[float]] = defaultdict(list)
    for d, i, e, t in zip(*(fb.column(c).to_pylist() for c in ("decision_id", "item_id", "event", "timestamp"))):
        if e == reward_event:
            hits[(d, i)].append(t)
    dec = dec.filter(pc.greater_equal(dec.column("position"), 0))
    req = dec.column("request_id").to_pylist()
    lengths = Counter(req)
    n_requests = len(lengths)
    if slate_size is None:
        slate_size = Counter(lengths.values()).most_common(1)[0][0] if lengths else 0
    props = dec.column("propensity").to_numpy(zero_copy_only=False).astype(np.float64)
    unknown = {r for r, p in zip(req, props) if not np.isfinite(p)}
    keep = np.array([lengths[r] == slate_size and r not in unknown for r in req], dtype=bool)
    dec = dec.filter(pa.array(keep))
    rows_t = dec.column("timestamp").to_pylist()
    click = [int(any(0 <= t - t0 <= window_s for t in hits.get((r, i), ())))
             for r, i, t0 in zip(dec.column("request_id").to_pylist(), dec.column("item_id").to_pylist(), rows_t)]
    table = dec.append_column("click", pa.array(click, pa.int64()))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, out)
    kept = len({r for r, k in zip(req, keep) if k})
    return {"rows": table.num_rows, "requests": kept, "dropped_requests": n_requests - kept,
            "slate_size": int(slate_size), "unknown_propensity_requests": len(unknown), "clicks": int(sum(click)), "window_s": float(window_s),
            "reward_event": reward_event, "out": str(out)}
